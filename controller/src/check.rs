//! The offline commands: `herald-controller check FILE…` (the validation rules run on manifests
//! before they are applied) and `herald-controller migrate FILE…` (MetalLB's configuration
//! rewritten as Herald's, then checked).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use herald_config::check::check_manifests;
use herald_config::migrate::{Namespaces, migrate as migrate_documents};
use serde_json::Value;

/// Every document of `files` (`-` is standard input); on failure, says which file and why.
fn read_documents(files: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for file in files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| text)
                .map_err(|e| format!("standard input: {e}"))?
        } else {
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
        };
        let docs = herald_config::yaml::documents::<Value>(&text)
            .map_err(|e| format!("{}: not valid YAML: {e}", file.display()))?;
        documents.extend(docs);
    }
    Ok(documents)
}

/// Prints every problem in `files` (judged together) and returns the exit code: 0 when there is
/// none, 1 when there are problems, 2 when a file cannot be read or parsed.
pub fn run(files: &[PathBuf], namespace: &str) -> ExitCode {
    let documents = match read_documents(files) {
        Ok(documents) => documents,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let problems = check_manifests(&documents, namespace);
    for problem in &problems {
        println!("{problem}");
    }
    if problems.is_empty() {
        println!(
            "{} objects checked, no problems",
            herald_config::yaml::objects(&documents).len()
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes the Herald objects migrated from `files` to standard output (YAML, ready for
/// `kubectl apply -f -`) and every refusal, difference and left-out object to standard error,
/// followed by `check`'s problems with the result. Exit code: 0 when everything migrated and
/// checks clean, 1 when something was refused or has a problem, 2 when a file cannot be read.
pub fn migrate(files: &[PathBuf], from_namespace: &str, namespace: &str) -> ExitCode {
    let documents = match read_documents(files) {
        Ok(documents) => documents,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let migration = migrate_documents(
        &documents,
        &Namespaces {
            from: from_namespace,
            to: namespace,
        },
    );
    let mut out = String::from("# Written by herald-controller migrate from MetalLB's configuration.\n");
    for object in &migration.objects {
        match herald_config::yaml::to_string(object) {
            Ok(yaml) => {
                out.push_str("---\n");
                out.push_str(&yaml);
            }
            Err(e) => {
                eprintln!("cannot write {}: {e}", object["metadata"]["name"]);
                return ExitCode::from(2);
            }
        }
    }
    print!("{out}");
    for note in &migration.refused {
        eprintln!("refused: {note}");
    }
    for note in &migration.differences {
        eprintln!("differs: {note}");
    }
    for note in &migration.left_out {
        eprintln!("left out: {note}");
    }
    let problems = check_manifests(&migration.objects, namespace);
    for problem in &problems {
        eprintln!("check: {problem}");
    }
    eprintln!(
        "{} objects written, {} refused, {} differences, {} left out, {} check problems",
        migration.objects.len(),
        migration.refused.len(),
        migration.differences.len(),
        migration.left_out.len(),
        problems.len()
    );
    if migration.refused.is_empty() && problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
