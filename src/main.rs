fn main() -> std::process::ExitCode {
    bondline::cli::main()
}
