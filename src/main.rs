//! The `incidentpost` binary: wiring only.
#![forbid(unsafe_code)]

/// mimalloc (its version 2, see Cargo.toml): the pack render and `import` are
/// allocation-bound and run faster on it than on glibc's malloc (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Write every incident, event, raw payload, delivery id and cursor of the data
    /// directory (storage.path) as NDJSON, for back-ups or moving to another store. Run it
    /// while the service is stopped (sled allows one process per directory).
    Export {
        /// Output file ("-" for standard output).
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
    },
    /// Load an export into an empty data directory (storage.path) and render the packs of
    /// resolved incidents again.
    Import {
        /// The NDJSON file written by `export` ("-" for standard input).
        input: PathBuf,
    },
    /// Turn a pasted timeline (lines like `14:23 UTC [PagerDuty] CRITICAL: …`) into a
    /// postmortem pack, offline: no server, no data directory.
    Render {
        /// The timeline text file ("-" for standard input).
        timeline: PathBuf,
        /// Where to write the zip.
        #[arg(short, long, default_value = "pack.zip")]
        output: PathBuf,
        /// The date of the incident (YYYY-MM-DD) when the text has no date line.
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
        /// A directory of replacement templates (default: render.templates_dir).
        #[arg(long)]
        templates: Option<PathBuf>,
    },
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
        Command::Render {
            timeline,
            output,
            date,
            templates,
        } => match render_offline(&settings, &timeline, &output, date, templates) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Export { output } => exit_with(export(&settings, &output)),
        Command::Import { input } => exit_with(import(&settings, &input)),
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

fn exit_with(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn export(settings: &Settings, output: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = incidentpost::startup::open_store(settings)?;
    let lines = if output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        incidentpost::transfer::export(store.as_ref(), &mut w)?
    } else {
        let file = std::fs::File::create(output)
            .with_context(|| format!("creating {}", output.display()))?;
        let mut w = std::io::BufWriter::new(file);
        incidentpost::transfer::export(store.as_ref(), &mut w)?
    };
    eprintln!(
        "exported {lines} records from {}",
        settings.storage.path.display()
    );
    Ok(())
}

fn import(settings: &Settings, input: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = incidentpost::startup::open_store(settings)?;
    let templates = incidentpost::postmortem::Templates::from_settings(&settings.render)?;
    let people = incidentpost::people::Directory::new(&settings.people)?;
    let (lines, incidents) = if input.as_os_str() == "-" {
        let stdin = std::io::stdin();
        let mut r = stdin.lock();
        incidentpost::transfer::import(store.as_ref(), &mut r, &templates, &people)?
    } else {
        let file =
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        let mut r = std::io::BufReader::new(file);
        incidentpost::transfer::import(store.as_ref(), &mut r, &templates, &people)?
    };
    eprintln!(
        "imported {lines} records ({incidents} incidents) into {}",
        settings.storage.path.display()
    );
    Ok(())
}

fn render_offline(
    settings: &Settings,
    timeline: &std::path::Path,
    output: &std::path::Path,
    date: Option<chrono::NaiveDate>,
    templates: Option<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use incidentpost::postmortem::{import, Templates};
    let text = if timeline.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(timeline)
            .with_context(|| format!("reading {}", timeline.display()))?
    };
    // `--templates` wins over render.templates_dir; redaction as configured.
    let templates = Templates::from_settings_in(&settings.render, templates.as_deref())?;
    let known = incidentpost::postmortem::Known {
        people: incidentpost::people::Directory::new(&settings.people)?,
        ..Default::default()
    };
    let imported = match import::parse(&text, date, None) {
        Ok(i) => i,
        Err(import::ImportError::NothingReadable(skipped)) => {
            for s in &skipped {
                eprintln!("line {}: {} ({})", s.line, s.text.trim(), s.reason);
            }
            anyhow::bail!(
                "no line of {} could be read as `HH:MM UTC [Source] text`",
                timeline.display()
            );
        }
        Err(e) => anyhow::bail!("{e}"),
    };
    for s in &imported.skipped {
        eprintln!(
            "warning: line {} not read: {} ({})",
            s.line,
            s.text.trim(),
            s.reason
        );
    }
    let pack = incidentpost::postmortem::render_pack_with(
        &templates,
        &imported.incident,
        &imported.events,
        &known,
    )?;
    std::fs::write(output, &pack.zip).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {} ({} events, {} lines not read): {}",
        output.display(),
        imported.events.len(),
        imported.skipped.len(),
        pack.files
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    app.run_until_stopped().await
}

/// The merged settings as pretty JSON (secrets redacted by their serializer).
fn toml_like(settings: &Settings) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(settings)
}
