//! The `incidentpost` binary: wiring only.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use incidentpost::config::{ConfigSources, Settings};
use incidentpost::startup::Application;
use incidentpost::telemetry;

/// IncidentPost turns PagerDuty, Datadog, GitHub, Slack and CloudWatch events into
/// incident postmortems. With no options it runs on its embedded defaults: listens on
/// 127.0.0.1:8080 and stores data under ./data.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Also read config/<ENV>.toml (relative to the working directory).
    #[arg(long, global = true, env = "INCIDENTPOST_ENV")]
    env: Option<String>,
    /// Also read this TOML file (after the env file). Environment variables
    /// INCIDENTPOST__SECTION__KEY override both.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default when no command is given).
    Serve,
    /// Load and validate the configuration, print it with secrets redacted, and exit.
    CheckConfig,
}

fn load(cli: &Cli) -> Result<Settings, incidentpost::config::ConfigError> {
    Settings::load(&ConfigSources {
        env: cli.env.clone(),
        file: cli.config.clone(),
        use_environment: true,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            match toml_like(&settings) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            }
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Command::Serve => {
            telemetry::init_tracing(&settings.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "incidentpost stopped with an error"
                    );
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    app.run_until_stopped().await
}

/// The merged settings as pretty JSON (secrets redacted by their serializer).
fn toml_like(settings: &Settings) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(settings)
}
