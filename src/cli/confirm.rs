//! Confirmation for the commands that change what an operator cannot easily get back.

use crate::cli::args::Confirmation;
use std::process::ExitCode;

impl Confirmation {
    /// Called once the plan is printed: `Ok` to go ahead; otherwise the exit code (0 for a
    /// dry run, 1 when the operator declines, 2 when nobody could be asked).
    pub(crate) fn go_ahead(self, action: &str) -> Result<(), ExitCode> {
        use std::io::{BufRead, IsTerminal, Write};
        if self.dry_run {
            println!("dry run: nothing changed");
            return Err(ExitCode::SUCCESS);
        }
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "not confirmed: {action} needs --yes when standard input is not a terminal (--dry-run shows the plan)"
            );
            return Err(ExitCode::from(2));
        }
        eprint!("{action}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            Ok(())
        } else {
            eprintln!("not done");
            Err(ExitCode::from(1))
        }
    }
}
