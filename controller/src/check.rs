//! `herald-controller check FILE…`: the validation rules run on manifests before they are applied.

use std::path::PathBuf;
use std::process::ExitCode;

use herald_config::check::check_manifests;

/// Prints every problem in `files` (judged together) and returns the exit code: 0 when there is
/// none, 1 when there are problems, 2 when a file cannot be read or parsed.
pub fn run(files: &[PathBuf], namespace: &str) -> ExitCode {
    let mut documents = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        match herald_config::yaml::documents::<serde_json::Value>(&text) {
            Ok(docs) => documents.extend(docs),
            Err(e) => {
                eprintln!("{}: not valid YAML: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    let problems = check_manifests(&documents, namespace);
    for problem in &problems {
        println!("{problem}");
    }
    if problems.is_empty() {
        println!("{} objects checked, no problems", documents.len());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
