//! The operator's access files: the password file and the ACL file.

use crate::acl::Acl;
use crate::auth::PasswordFile;

/// The first byte picks the file, the rest is its text. Checks, for arbitrary text: parsing
/// never panics, and a refused file is refused at its first bad line: the error names a line of
/// the file, the lines before it parse, and the file up to and including it does not.
pub fn auth_files(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if kind % 2 == 0 {
        if let Err(e) = PasswordFile::parse(text) {
            first_bad_line(text, e.line, |t| {
                PasswordFile::parse(t).err().map(|e| e.line)
            });
        }
    } else if let Err(e) = Acl::parse(text) {
        first_bad_line(text, e.line, |t| Acl::parse(t).err().map(|e| e.line));
    }
}

fn first_bad_line(text: &str, line: usize, bad_line: impl Fn(&str) -> Option<usize>) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "error at line {line} of {} lines",
        lines.len()
    );
    let before = lines[..line - 1].join("\n");
    assert_eq!(bad_line(&before), None, "the lines before line {line}");
    let through = lines[..line].join("\n");
    assert_eq!(
        bad_line(&through),
        Some(line),
        "the lines through line {line}"
    );
}
