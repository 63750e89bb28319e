//! The body of the hidden `herald-lab container` subcommand: the last step of starting a
//! Pod's container, run by the lab's kubelet inside `ip netns exec` (so in the Pod's network
//! namespace and a private mount namespace). It bind-mounts the Pod's volumes where the
//! container expects them, makes `/` read-only if the Pod asks for it, and replaces itself
//! with `setpriv`, which drops to the container's user and capabilities and execs the program.
//! Mounts made here vanish with the process's mount namespace.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// A bind mount, as `SOURCE:TARGET:ro|rw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path the container sees.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

impl std::str::FromStr for BindMount {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (rest, mode) = text.rsplit_once(':').ok_or("expected SOURCE:TARGET:ro|rw")?;
        let (source, target) = rest.split_once(':').ok_or("expected SOURCE:TARGET:ro|rw")?;
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            other => return Err(format!("mode {other:?} is not ro or rw")),
        };
        Ok(BindMount {
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

fn mount(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Mounts, then execs `setpriv SETPRIV... -- PROGRAM ARGS...`; returns only on failure.
pub fn enter(mounts: &[BindMount], read_only_root: bool, setpriv: &[String], program: &[String]) -> String {
    for m in mounts {
        let (source, target) = (m.source.display().to_string(), m.target.display().to_string());
        if let Err(e) = std::fs::create_dir_all(&m.target) {
            return format!("creating mount point {target}: {e}");
        }
        if let Err(e) = mount(&["--bind", &source, &target]) {
            return e;
        }
        if m.read_only
            && let Err(e) = mount(&["-o", "remount,bind,ro", &target])
        {
            return e;
        }
    }
    if read_only_root && let Err(e) = mount(&["-o", "remount,bind,ro", "/"]) {
        return e;
    }
    let Some((first, rest)) = program.split_first() else {
        return "no program given".into();
    };
    let error = std::process::Command::new("setpriv")
        .args(setpriv)
        .arg("--")
        .arg(first)
        .args(rest)
        .exec();
    format!("exec setpriv … {first}: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse() {
        let m: BindMount = "/run/lab/pods/u/volumes/kube-api-access:/var/run/secrets/kubernetes.io/serviceaccount:ro"
            .parse()
            .unwrap();
        assert_eq!(m.source, PathBuf::from("/run/lab/pods/u/volumes/kube-api-access"));
        assert_eq!(m.target, PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"));
        assert!(m.read_only);
        assert!("/a:/b:rx".parse::<BindMount>().is_err());
        assert!("/a".parse::<BindMount>().is_err());
    }
}
