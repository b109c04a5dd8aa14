//! Man pages and shell completions of the `gateway` and `device-sim` commands, from the clap
//! definitions the binaries parse: their `cli.rs` files are compiled into this crate as modules.
//! What clap does not know (files, signals, exit codes, environment) is written here, as extra
//! sections of the top page.

use std::path::PathBuf;

use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

// Only the command definitions are used here, never the parsed values the binaries read.
#[allow(dead_code)]
#[path = "../../gateway/src/cli.rs"]
mod gateway_cli;

#[allow(dead_code)]
#[path = "../../device-sim/src/cli.rs"]
mod device_sim_cli;

/// One generated file: its path under `dist/` and its contents.
pub(crate) type File = (PathBuf, Vec<u8>);

/// A command as the pages and completions describe it: `#[command(version)]` would give xtask's
/// own version here, so the workspace's is set explicitly (the three crates share it).
fn gateway() -> clap::Command {
    gateway_cli::Cli::command().version(env!("CARGO_PKG_VERSION"))
}

fn device_sim() -> clap::Command {
    device_sim_cli::Cli::command().version(env!("CARGO_PKG_VERSION"))
}

/// gateway(8) and device-sim(1), each with a page per visible subcommand (gateway-store-check(8)...).
pub(crate) fn command_pages() -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    pages(gateway(), "8", &gateway_sections(), &mut files)?;
    pages(device_sim(), "1", &device_sim_sections(), &mut files)?;
    Ok(files)
}

fn pages(
    cmd: clap::Command,
    section: &str,
    extra: &Roff,
    files: &mut Vec<File>,
) -> anyhow::Result<()> {
    // `help` is a flag on every page; a `help` subcommand page would only repeat that.
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives subcommands their display names (gateway-store-check), which name their pages.
    cmd.build();
    let mut subcommands: Vec<&clap::Command> =
        cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    while let Some(sub) = subcommands.pop() {
        subcommands.extend(sub.get_subcommands().filter(|s| !s.is_hide_set()));
        let man = manual(sub.clone(), section);
        let mut page = Vec::new();
        man.render(&mut page)?;
        files.push((PathBuf::from("man").join(man.get_filename()), page));
    }
    let man = manual(cmd, section);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    extra.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    files.push((PathBuf::from("man").join(man.get_filename()), page));
    Ok(())
}

fn manual(cmd: clap::Command, section: &str) -> Man {
    let source = format!("gateway {}", env!("CARGO_PKG_VERSION"));
    let manual = match section {
        "1" => "User Commands",
        _ => "System Administration",
    };
    Man::new(cmd).section(section).source(source).manual(manual)
}

/// Sections as (heading, entries): an entry is a term and its text, or text alone.
fn sections(sections: &[(&str, &[(&str, &str)])]) -> Roff {
    let mut roff = Roff::new();
    for (heading, entries) in sections {
        roff.control("SH", [*heading]);
        for (term, text) in *entries {
            if term.is_empty() {
                roff.control("PP", []);
            } else {
                roff.control("TP", []);
                roff.text([bold(*term)]);
            }
            roff.text([roman(*text)]);
        }
    }
    roff
}

fn gateway_sections() -> Roff {
    sections(&[
        (
            "FILES",
            &[
                (
                    "/etc/gateway/gateway.toml",
                    "The configuration the Debian package installs and its gateway.service unit \
                     starts the gateway with; see gateway.toml(5). Without --config the gateway \
                     reads no file and runs on the same built-in defaults, except the store \
                     directory.",
                ),
                (
                    "/var/lib/gateway",
                    "The store (store.redb) of the packaged configuration (storage.dir), owned by \
                     the gateway user; the unit's working directory.",
                ),
                (
                    "/usr/share/gateway/dashboards",
                    "Grafana dashboards, their provisioning files and a prometheus.yml example.",
                ),
                (
                    "/usr/share/doc/gateway",
                    "The README and the documentation: configuration, security, operations, \
                     design, conformance, the simulator.",
                ),
            ],
        ),
        (
            "SIGNALS",
            &[
                (
                    "SIGHUP",
                    "Reloads the password and ACL files (both stay as they were when either fails \
                     to load) and each TLS listener's certificate, key and CA files, for new \
                     handshakes. `systemctl reload gateway` sends it.",
                ),
                (
                    "SIGTERM, SIGINT",
                    "Graceful shutdown: the listeners close, MQTT 5 clients get DISCONNECT 0x8B \
                     (server shutting down), every connection closes, and the process exits 0.",
                ),
            ],
        ),
        (
            "EXIT STATUS",
            &[
                (
                    "0",
                    "Stopped by SIGTERM or SIGINT; a subcommand that succeeded.",
                ),
                (
                    "1",
                    "A failure while running (e.g. the MQTT listener's address is in use).",
                ),
                (
                    "2",
                    "A configuration mistake: an unknown key, a wrong type or an out-of-range \
                     value in the file or a flag, a password or ACL file that cannot be read, a \
                     store that is not sound. One line on stderr names it. `gateway store check` \
                     also exits 2 for a store that is not sound.",
                ),
            ],
        ),
        (
            "ENVIRONMENT",
            &[
                (
                    "RUST_LOG",
                    "A log filter (e.g. debug, or warn,gateway=debug) that wins over log.level.",
                ),
                (
                    "NOTIFY_SOCKET",
                    "Set by systemd for a Type=notify service: the gateway sends READY=1 once its \
                     listeners accept and its store is loaded, and STOPPING=1 when it starts to \
                     drain.",
                ),
            ],
        ),
        (
            "SEE ALSO",
            &[(
                "",
                "gateway.toml(5), device-sim(1), mosquitto_passwd(1), systemctl(1), \
                 /usr/share/doc/gateway/configuration.md, /usr/share/doc/gateway/security.md, \
                 /usr/share/doc/gateway/operations.md",
            )],
        ),
    ])
}

fn device_sim_sections() -> Roff {
    sections(&[
        (
            "FILES",
            &[(
                "/usr/share/gateway/scenarios",
                "Example scenario files (smoke.toml: 200 devices for 5 s) for --scenario.",
            )],
        ),
        (
            "EXIT STATUS",
            &[
                ("0", "Every device connected and every check passed."),
                (
                    "1",
                    "A device failed to connect, or a check such as --max-loss failed.",
                ),
                (
                    "2",
                    "Bad input (a flag or the scenario file), or an error that stopped the run.",
                ),
            ],
        ),
        (
            "SEE ALSO",
            &[(
                "",
                "gateway(8), /usr/share/doc/gateway/simulator.md, \
                 /usr/share/gateway/dashboards/device-sim.json",
            )],
        ),
    ])
}

/// bash, zsh and fish completions of both commands, at the paths Debian's shells look in (as
/// laid out under `dist/completions/`, mapped in the package's asset list).
pub(crate) fn completions() -> Vec<File> {
    let mut files = Vec::new();
    for (name, mut cmd) in [("gateway", gateway()), ("device-sim", device_sim())] {
        for (shell, file) in [
            (Shell::Bash, name.to_owned()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut script);
            files.push((
                PathBuf::from("completions")
                    .join(shell.to_string())
                    .join(file),
                script,
            ));
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(files: &[File], name: &str) -> String {
        let (_, bytes) = files
            .iter()
            .find(|(path, _)| path == &PathBuf::from("man").join(name))
            .unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(bytes.clone()).expect("UTF-8 page")
    }

    #[test]
    fn every_visible_command_has_a_page_and_hidden_ones_none() {
        let files = command_pages().unwrap();
        let mut names: Vec<String> = files
            .iter()
            .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "device-sim-run.1",
                "device-sim.1",
                "gateway-passwd.8",
                "gateway-store-check.8",
                "gateway-store-export.8",
                "gateway-store-repair.8",
                "gateway-store.8",
                "gateway.8",
            ]
        );
    }

    #[test]
    fn top_pages_carry_the_version_and_the_sections_clap_does_not_know() {
        let files = command_pages().unwrap();
        let gateway = page(&files, "gateway.8");
        for needle in [
            ".TH gateway 8",
            "\\-\\-config",
            "gateway\\-store(8)",
            ".SH FILES",
            ".SH SIGNALS",
            ".SH \"EXIT STATUS\"",
            env!("CARGO_PKG_VERSION"),
        ] {
            assert!(
                gateway.contains(needle),
                "{needle:?} missing in:\n{gateway}"
            );
        }
        let sim = page(&files, "device-sim.1");
        assert!(
            !sim.contains("worker"),
            "the hidden worker subcommand shows:\n{sim}"
        );
        assert!(page(&files, "device-sim-run.1").contains("\\-\\-scenario"));
    }
}
