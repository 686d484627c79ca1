//! `cargo bench`: the same tables as `fairtune bench` (DPO tokens/s per backend, group_stats GB/s).
//! Set FAIRTUNE_BENCH_QUICK=1 for a smoke run.

fn main() {
    // cargo passes `--bench`; we take no other arguments.
    let options = fairtune::throughput::BenchOptions {
        backend: fairtune::device::BackendChoice::Auto,
        quick: std::env::var_os("FAIRTUNE_BENCH_QUICK").is_some(),
    };
    match fairtune::throughput::run(&options) {
        Ok(table) => println!("{table}"),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(error.exit_code());
        }
    }
}
