//! `reprise inject [FILE|-]`: the injector's library over YAML, offline. Returns what to print;
//! `main` owns the streams and the exit code.

use std::io::Read as _;
use std::path::Path;

use reprise_injector::Settings;
use reprise_injector::manifest::{self, ManifestError};

use crate::args::InjectArgs;
use crate::commands::Outcome;

/// Why nothing was written, and the exit code: 2 for an invalid annotation, 1 otherwise.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

pub fn run(args: &InjectArgs) -> Result<Outcome, Failure> {
    let (text, source) = read(args.file.as_deref())?;
    let settings = Settings {
        image: args.image.clone(),
        image_pull_policy: Some(args.image_pull_policy.clone()),
        native_sidecar: !args.classic_sidecar,
        ..Settings::default()
    };
    match manifest::inject_yaml(&text, &settings) {
        Ok(injected) => Ok(Outcome {
            stdout: injected.output,
            notes: injected.notes,
            complete: true,
        }),
        Err(e @ (ManifestError::Inject { .. } | ManifestError::Invalid(_))) => Err(Failure {
            message: invalid_lines(&source, &e),
            code: 2,
        }),
        Err(e) => Err(Failure {
            message: format!("{source}: {e}"),
            code: 1,
        }),
    }
}

/// One line per invalid annotation, each naming the input, the document and the object.
fn invalid_lines(source: &str, e: &ManifestError) -> String {
    let mut lines = Vec::new();
    for each in e.each() {
        match each {
            ManifestError::Inject {
                document,
                object,
                source: problems,
            } => {
                for p in problems.problems() {
                    lines.push(format!(
                        "{source}: document {document}: {object}: {}",
                        p.describe()
                    ));
                }
            }
            other => lines.push(format!("{source}: {other}")),
        }
    }
    lines.join("\n")
}

fn read(file: Option<&Path>) -> Result<(String, String), Failure> {
    let failed = |what: String, e: std::io::Error| Failure {
        message: format!("cannot read {what}: {e}"),
        code: 1,
    };
    match file {
        None => read_stdin().map_err(|e| failed("stdin".to_owned(), e)),
        Some(path) if path == Path::new("-") => {
            read_stdin().map_err(|e| failed("stdin".to_owned(), e))
        }
        Some(path) => std::fs::read_to_string(path)
            .map(|text| (text, path.display().to_string()))
            .map_err(|e| failed(path.display().to_string(), e)),
    }
}

fn read_stdin() -> std::io::Result<(String, String)> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok((text, "stdin".to_owned()))
}
