//! The `pgaas` binary: install the crypto provider, set up logging, hand over to the CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    // One rustls provider for the whole process (sqlx and the ACME client share it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGAAS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    pgaas::cli::main()
}
