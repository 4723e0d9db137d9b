fn main() {
    eprintln!("mongo-projector: not implemented yet");
    std::process::exit(1);
}
