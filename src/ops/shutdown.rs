//! Graceful stop: the first SIGTERM or SIGINT cancels one token that every task watches (stop
//! reading, finish in-flight writes, write final checkpoints); a second signal exits at once,
//! which is safe because the sequence guard makes redelivery harmless.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;

/// Exit code after a second signal (128 + SIGINT, as shells report an interrupted program).
pub(crate) const FORCED_EXIT_CODE: i32 = 130;

/// Installs the handlers; returns the token the first signal cancels.
pub fn install() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let cancel = token.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "stopping: draining in-flight work and writing checkpoints"
                    );
                    cancel.cancel();
                } else {
                    eprintln!("second signal: exiting immediately");
                    std::process::exit(FORCED_EXIT_CODE);
                }
            }
        })?;
    Ok(token)
}
