fn main() {
    std::process::exit(outpost::run(std::env::args_os()));
}
