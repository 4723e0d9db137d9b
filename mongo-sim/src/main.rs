fn main() {
    eprintln!("mongo-sim: not implemented yet");
    std::process::exit(1);
}
