//! Packaging tasks of the workspace, run as `cargo xtask TASK` (the alias is in
//! `.cargo/config.toml`).
//!
//! `cargo xtask dist` writes into `dist/` (git-ignored) what the Debian package and the container
//! ship besides the binaries: the man pages gateway(8), gateway.toml(5) and device-sim(1) (with one
//! page per subcommand), bash, zsh and fish completions, and the packaged `gateway.toml` (the
//! package's and the container image's). Nothing it writes is checked in: the pages and
//! completions come from the binaries' own clap definitions and the configuration page from
//! `config/gateway.toml`, at every package build, so they cannot go stale. `cargo xtask deb
//! [ARGS]` runs `dist`, then `cargo deb -p gateway ARGS`, whose asset list (`gateway/Cargo.toml`)
//! names those files.

mod config_page;
mod manual;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::Parser;
use config_page::Variant;

/// Packaging tasks: man pages, completions, the packaged config, the Debian package.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
enum Task {
    /// Write man pages, shell completions and the packaged gateway.toml into dist/.
    Dist,
    /// Run `dist`, then `cargo deb -p gateway` with ARGS (e.g. --fast, --no-build, --profile P).
    Deb {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    match Task::parse() {
        Task::Dist => dist(&root),
        Task::Deb { args } => {
            dist(&root)?;
            let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .current_dir(&root)
                .args(["deb", "-p", "gateway"])
                .args(&args)
                .status()
                .context("cannot run `cargo deb` (install it: cargo install cargo-deb --locked)")?;
            if !status.success() {
                bail!("cargo deb failed: {status}");
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

/// The fixed place `gateway/Cargo.toml`'s assets read from, whatever CARGO_TARGET_DIR says:
/// cargo-deb resolves asset paths from the crate, and takes any path with `/target/` in it for a
/// misspelt build product, hence a folder of its own rather than one under `target/`.
fn dist_dir(root: &Path) -> PathBuf {
    root.join("dist")
}

fn dist(root: &Path) -> anyhow::Result<()> {
    let out = dist_dir(root);
    // Emptied first: a page of a subcommand that no longer exists must not be packaged.
    match std::fs::remove_dir_all(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot empty {}", out.display())),
    }
    let documented = root.join("config").join("gateway.toml");
    let documented = std::fs::read_to_string(&documented)
        .with_context(|| format!("cannot read {}", documented.display()))?;
    let packaged = config_page::packaged_config(&documented, Variant::Debian)?;
    let container = config_page::packaged_config(&documented, Variant::Container)?;

    let mut files = manual::command_pages()?;
    files.push((
        PathBuf::from("man/gateway.toml.5"),
        config_page::render(&packaged, env!("CARGO_PKG_VERSION"))?.into_bytes(),
    ));
    files.extend(manual::completions());
    files.push((PathBuf::from("etc/gateway.toml"), packaged.into_bytes()));
    files.push((
        PathBuf::from("container/gateway.toml"),
        container.into_bytes(),
    ));

    for (path, bytes) in &files {
        let path = out.join(path);
        let dir = path.parent().expect("every file is in a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("wrote {} files into {}", files.len(), out.display());
    Ok(())
}
