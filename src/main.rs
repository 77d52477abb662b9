//! The `pgaas` binary: install the crypto provider, set up logging, hand over to the CLI.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Default log filter: PostgreSQL's NOTICEs ("... already exists, skipping" from idempotent DDL)
/// are not news to an operator; set `PGAAS_LOG` to see them.
const DEFAULT_LOG: &str = "info,sqlx::postgres::notice=warn";

fn main() -> ExitCode {
    // One rustls provider for the whole process (sqlx and the ACME client share it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGAAS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    pgaas::cli::main()
}
