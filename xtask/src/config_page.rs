//! The packaged `/etc/gateway/gateway.toml` (Debian package and container image) and its man page
//! gateway.toml(5), all made from
//! `config/gateway.toml`, the documented defaults that list every key with what it does.
//!
//! The packaged files are that file with its store under /var/lib/gateway (and, in the container,
//! listeners on every interface). The page is read from the Debian package's file's comments: a comment block ending in `key = value` becomes that key's entry, a
//! block without one a paragraph; indented `term  text` lines are a list, TOML lines an example.
//! Any other line stops the build, so a new construct in the file cannot vanish from the page.

use anyhow::{bail, Context as _};
use clap_mangen::roff::{bold, roman, Roff};

/// Where a packaged configuration is used.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Variant {
    /// /etc/gateway/gateway.toml of the Debian package: loopback only, as documented.
    Debian,
    /// The container image's: every interface, since a published port reaches no loopback.
    Container,
}

/// (what the documented file says, what a packaged one says instead): each must occur exactly
/// once, so an edit of the documented file that moves them fails the build instead of shipping
/// the wrong store directory or listener.
const STORE: (&str, &str) = (
    "\ndir = \"data\"\n",
    "\n# Packaged: /var/lib/gateway, the gateway user's; the built-in default is \"data\".\n\
     dir = \"/var/lib/gateway\"\n",
);
const USAGE: &str = "`gateway --config config/gateway.toml`";
const DEBIAN_USAGE: &str = "`gateway --config /etc/gateway/gateway.toml` (gateway.service does)";
const CONTAINER_USAGE: &str = "`gateway --config /etc/gateway/gateway.toml` (the image does)";
const CONTAINER_LISTEN: [(&str, &str); 2] = [
    (
        "\nlisten = \"127.0.0.1:1883\"\n",
        "\n# Container: every interface, for published ports to reach. Clients must then log in\n\
         # (auth.password_file) unless auth.allow_anonymous is true.\n\
         listen = \"0.0.0.0:1883\"\n",
    ),
    (
        "\nlisten = \"127.0.0.1:9883\"\n",
        "\n# Container: every interface, for the published port (mind the admin_token).\n\
         listen = \"0.0.0.0:9883\"\n",
    ),
];

pub(crate) fn packaged_config(documented: &str, variant: Variant) -> anyhow::Result<String> {
    let mut changes = vec![STORE];
    match variant {
        Variant::Debian => changes.push((USAGE, DEBIAN_USAGE)),
        Variant::Container => {
            changes.push((USAGE, CONTAINER_USAGE));
            changes.extend(CONTAINER_LISTEN);
        }
    }
    let mut text = documented.to_owned();
    for (from, to) in changes {
        let found = text.matches(from).count();
        if found != 1 {
            bail!("config/gateway.toml: expected {from:?} once, found it {found} times");
        }
        text = text.replacen(from, to, 1);
    }
    Ok(text)
}

/// A run of comment lines (without their `#`), and the `key = value` line that ends it, if any.
struct Block {
    comment: Vec<String>,
    key: Option<(String, String)>,
}

/// A `[table]` (None: the file's header before the first one) and its blocks.
struct Table {
    name: Option<String>,
    blocks: Vec<Block>,
}

fn parse(text: &str) -> anyhow::Result<Vec<Table>> {
    let mut tables = vec![Table {
        name: None,
        blocks: Vec::new(),
    }];
    let mut comment: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let table = tables.last_mut().expect("one table at least");
        if let Some(rest) = line.strip_prefix('#') {
            comment.push(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
        } else if line.trim().is_empty() {
            if !comment.is_empty() {
                table.blocks.push(Block {
                    comment: std::mem::take(&mut comment),
                    key: None,
                });
            }
        } else if let Some(name) = table_header(line) {
            if !comment.is_empty() {
                bail!("line {}: a comment runs into [{name}]", n + 1);
            }
            tables.push(Table {
                name: Some(name.to_owned()),
                blocks: Vec::new(),
            });
        } else if let Some((key, value)) = key_value(line) {
            table.blocks.push(Block {
                comment: std::mem::take(&mut comment),
                key: Some((key.to_owned(), value.to_owned())),
            });
        } else {
            bail!(
                "line {}: not a comment, a [table] or a key: {line:?}",
                n + 1
            );
        }
    }
    if !comment.is_empty() {
        let table = tables.last_mut().expect("one table at least");
        table.blocks.push(Block { comment, key: None });
    }
    Ok(tables)
}

fn table_header(line: &str) -> Option<&str> {
    let name = line.strip_prefix('[')?.strip_suffix(']')?;
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    is_name(name).then_some(name)
}

fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(" = ")?;
    is_name(key).then_some((key, value.trim()))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A table documented only in comments (`[[listeners]]: ...` after the last real one) opens a
/// section of its own on the page.
fn commented_table(block: &Block) -> Option<&str> {
    let first = block.comment.first()?;
    let (head, _) = first.split_once(": ")?;
    table_header(head).map(|_| head)
}

/// The page: DESCRIPTION from the file's header, then one section per table with an entry per key.
pub(crate) fn render(packaged: &str, version: &str) -> anyhow::Result<String> {
    let tables = parse(packaged).context("config/gateway.toml")?;
    let mut roff = Roff::new();
    let source = format!("gateway {version}");
    roff.control(
        "TH",
        ["gateway.toml", "5", "", source.as_str(), "File Formats"],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman("gateway.toml - configuration file of gateway(8)")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("/etc/gateway/gateway.toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    for table in &tables {
        if let Some(name) = &table.name {
            roff.control("SH", [format!("[{name}]").as_str()]);
        }
        for block in &table.blocks {
            if let Some(heading) = commented_table(block) {
                roff.control("SH", [heading]);
            }
            match &block.key {
                Some((key, value)) => {
                    roff.control("TP", []);
                    roff.text([bold(key.as_str()), roman(format!(" = {value}"))]);
                    comment(&mut roff, &block.comment, false);
                }
                None => comment(&mut roff, &block.comment, true),
            }
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "gateway(8), mosquitto_passwd(1), /usr/share/doc/gateway/configuration.md, \
         /usr/share/doc/gateway/security.md",
    )]);
    Ok(roff.to_roff())
}

/// How one comment line reads on the page.
enum Line<'a> {
    Blank,
    /// `  term   text`: a list entry.
    Term(&'a str, &'a str),
    /// Deeper indented: more text of the list entry above.
    More(&'a str),
    /// `[[table]]` or `key = value`: an example.
    Toml(&'a str),
    Prose(&'a str),
}

fn classify(line: &str) -> Line<'_> {
    if line.trim().is_empty() {
        Line::Blank
    } else if let Some(entry) = line.strip_prefix("  ").filter(|l| !l.starts_with("  ")) {
        match entry.split_once("  ") {
            Some((term, text)) => Line::Term(term, text.trim()),
            None => Line::More(entry.trim()),
        }
    } else if line.starts_with("    ") {
        Line::More(line.trim())
    } else if table_header(line).is_some() || key_value(line).is_some() {
        Line::Toml(line)
    } else {
        Line::Prose(line)
    }
}

/// Renders a comment: prose lines filled into paragraphs, lists as tagged paragraphs, examples
/// unfilled. A key's first paragraph follows its `.TP` tag, the next ones are indented under it;
/// a comment of its own starts each paragraph with `.PP`.
fn comment(roff: &mut Roff, lines: &[String], standalone: bool) {
    let mut text = Paragraphs {
        prose: Vec::new(),
        first: true,
        standalone,
    };
    let mut in_example = false;
    for line in lines {
        let kind = classify(line);
        if in_example && !matches!(kind, Line::Toml(_)) {
            roff.control("fi", []);
            in_example = false;
        }
        match kind {
            Line::Prose(line) => text.prose.push(line),
            Line::Blank => text.flush(roff),
            Line::Term(term, line) => {
                text.flush(roff);
                roff.control("TP", []);
                roff.text([bold(term)]);
                roff.text([roman(line)]);
                text.first = false;
            }
            Line::More(line) => {
                roff.text([roman(line)]);
            }
            Line::Toml(line) => {
                text.flush(roff);
                if !in_example {
                    roff.control("PP", []);
                    roff.control("nf", []);
                    in_example = true;
                }
                roff.text([roman(line)]);
                text.first = false;
            }
        }
    }
    if in_example {
        roff.control("fi", []);
    }
    text.flush(roff);
}

/// Prose lines gathered into the paragraph they fill.
struct Paragraphs<'a> {
    prose: Vec<&'a str>,
    first: bool,
    standalone: bool,
}

impl Paragraphs<'_> {
    fn flush(&mut self, roff: &mut Roff) {
        if self.prose.is_empty() {
            return;
        }
        if self.standalone {
            roff.control("PP", []);
        } else if !self.first {
            roff.control("IP", []);
        }
        roff.text([roman(self.prose.join(" "))]);
        self.prose.clear();
        self.first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documented() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/gateway.toml"
        ))
        .expect("read config/gateway.toml")
    }

    /// The lines of `packaged` that `documented` does not have.
    fn new_lines<'a>(documented: &str, packaged: &'a str) -> Vec<&'a str> {
        let old: Vec<&str> = documented.lines().collect();
        packaged.lines().filter(|l| !old.contains(l)).collect()
    }

    #[test]
    fn the_debian_config_differs_only_in_the_store_directory_and_its_usage_line() {
        let documented = documented();
        let packaged = packaged_config(&documented, Variant::Debian).unwrap();
        let added = new_lines(&documented, &packaged);
        assert_eq!(added.len(), 3, "{added:#?}");
        assert!(added.contains(&"dir = \"/var/lib/gateway\""));
        assert!(!packaged.contains("dir = \"data\""));
        assert!(packaged.contains("\nlisten = \"127.0.0.1:1883\"\n"));
        assert!(packaged.contains("\nlisten = \"127.0.0.1:9883\"\n"));
    }

    #[test]
    fn the_container_config_also_listens_on_every_interface() {
        let documented = documented();
        let packaged = packaged_config(&documented, Variant::Container).unwrap();
        let added = new_lines(&documented, &packaged);
        assert_eq!(added.len(), 8, "{added:#?}");
        assert!(added.contains(&"dir = \"/var/lib/gateway\""));
        assert!(added.contains(&"listen = \"0.0.0.0:1883\""));
        assert!(added.contains(&"listen = \"0.0.0.0:9883\""));
        assert!(!packaged.contains("127.0.0.1"));
    }

    #[test]
    fn a_documented_file_without_the_lines_it_rewrites_fails() {
        let documented = documented().replace("dir = \"data\"", "dir = \"store\"");
        let err = packaged_config(&documented, Variant::Debian)
            .unwrap_err()
            .to_string();
        assert!(err.contains("found it 0 times"), "{err}");
    }

    #[test]
    fn every_table_and_key_has_its_entry_on_the_page() {
        let packaged = packaged_config(&documented(), Variant::Debian).unwrap();
        let page = render(&packaged, "9.9.9").unwrap();
        let mut keys = 0;
        for line in packaged.lines() {
            if let Some(name) = table_header(line) {
                assert!(page.contains(&format!(".SH [{name}]")), "[{name}]");
            } else if let Some((key, _)) = key_value(line) {
                let entry = format!(".TP\n\\fB{key}\\fR");
                assert!(page.contains(&entry), "{key} has no entry");
                keys += 1;
            }
        }
        assert!(keys >= 30, "only {keys} keys found");
        assert!(page.contains(".SH [[listeners]]"));
        assert!(page.contains("gateway 9.9.9"));
        assert!(page.contains("require_client_cert"));
    }

    #[test]
    fn an_unknown_line_stops_the_page() {
        let err = render("[mqtt]\nlisten: 1\n", "0").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
