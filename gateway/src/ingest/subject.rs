//! The subject a rule writes a message to: a template of dot-separated tokens, each a literal or
//! a placeholder filled from the message, and the escaping that keeps what a device chose (its
//! topic levels, its client id) from changing the subject's structure.
//!
//! Placeholders are whole tokens: `{client_id}`, `{N}` (topic level N, from 1) and `{topic}` (every
//! level, one token each; last only). A filled token is escaped: bytes other than ASCII letters,
//! digits and `-_~=:@,` become `%XX` (so `.`, `*`, `>`, whitespace and `%` itself cannot appear),
//! and an empty or absent level becomes `%`. nats-server's own MQTT layer leaves `*` and `>` in a
//! topic as they are, so a device could publish to a wildcard; this escaping is reversible and
//! never produces a wildcard or an extra token.

use std::fmt::Write as _;

/// Why a subject template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("empty token (two dots, or a dot at either end)")]
    EmptyToken,
    #[error(
        "token {0:?}: a literal token holds only ASCII letters, digits, '-' or '_'; a placeholder \
         ({{client_id}}, {{N}}, {{topic}}) is a whole token"
    )]
    BadToken(String),
    #[error("{{0}}: topic levels count from 1")]
    LevelZero,
    #[error("{{topic}} stands for the remaining tokens: only as the last token")]
    TopicNotLast,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    ClientId,
    /// Topic level, from 1.
    Level(usize),
    /// Every topic level, one token each.
    Topic,
}

/// A parsed subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Token>);

impl Template {
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateError> {
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(TemplateError::EmptyToken);
            }
            let token = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some("client_id") => Token::ClientId,
                Some("topic") if i + 1 == parts.len() => Token::Topic,
                Some("topic") => return Err(TemplateError::TopicNotLast),
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    match n.parse::<usize>() {
                        Ok(0) => return Err(TemplateError::LevelZero),
                        Ok(level) => Token::Level(level),
                        Err(_) => return Err(TemplateError::BadToken((*part).to_owned())),
                    }
                }
                Some(_) => return Err(TemplateError::BadToken((*part).to_owned())),
                None if part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Token::Literal((*part).to_owned())
                }
                None => return Err(TemplateError::BadToken((*part).to_owned())),
            };
            tokens.push(token);
        }
        Ok(Template(tokens))
    }

    /// The highest topic level a `{N}` names, if any.
    pub(crate) fn highest_level(&self) -> Option<usize> {
        self.0
            .iter()
            .filter_map(|t| match t {
                Token::Level(n) => Some(*n),
                _ => None,
            })
            .max()
    }

    /// The stream subject that captures every subject of the template: placeholders as `*`,
    /// `{topic}` as `>`.
    pub(crate) fn wildcard(&self) -> String {
        let tokens: Vec<&str> = self
            .0
            .iter()
            .map(|t| match t {
                Token::Literal(s) => s.as_str(),
                Token::ClientId | Token::Level(_) => "*",
                Token::Topic => ">",
            })
            .collect();
        tokens.join(".")
    }

    /// The subject of a message on `topic` from `client_id`.
    pub(crate) fn render(&self, topic: &str, client_id: &str) -> String {
        let mut out = String::with_capacity(64);
        for (i, token) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match token {
                Token::Literal(s) => out.push_str(s),
                Token::ClientId => escape_into(&mut out, client_id),
                Token::Level(n) => escape_into(&mut out, topic.split('/').nth(n - 1).unwrap_or("")),
                Token::Topic => {
                    for (j, level) in topic.split('/').enumerate() {
                        if j > 0 {
                            out.push('.');
                        }
                        escape_into(&mut out, level);
                    }
                }
            }
        }
        out
    }
}

/// Appends `text` as one subject token (see the module's description).
pub(crate) fn escape_into(out: &mut String, text: &str) {
    if text.is_empty() {
        out.push('%');
        return;
    }
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~=:@,".contains(&b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_whole_tokens() {
        let t = Template::parse("telemetry.{client_id}.{2}").unwrap();
        assert_eq!(t.render("devices/temp/x", "dev-1"), "telemetry.dev-1.temp");
        assert_eq!(t.wildcard(), "telemetry.*.*");
        assert_eq!(t.highest_level(), Some(2));
        let all = Template::parse("raw.{topic}").unwrap();
        assert_eq!(all.render("a/b/c", "c"), "raw.a.b.c");
        assert_eq!(all.wildcard(), "raw.>");
    }

    #[test]
    fn device_chosen_text_never_changes_the_structure() {
        let t = Template::parse("t.{client_id}.{1}.{2}").unwrap();
        assert_eq!(
            t.render("a.b/*", "x y>"),
            "t.x%20y%3E.a%2Eb.%2A",
            "dots, wildcards and spaces escaped"
        );
        assert_eq!(
            t.render("/", "%"),
            "t.%25.%.%",
            "empty levels and the escape itself"
        );
        assert_eq!(t.render("only", "c"), "t.c.only.%", "an absent level");
        assert_eq!(t.render("é/ü", "c"), "t.c.%C3%A9.%C3%BC");
        let all = Template::parse("raw.{topic}").unwrap();
        assert_eq!(all.render("a/>/c.d", "c"), "raw.a.%3E.c%2Ed");
    }

    #[test]
    fn bad_templates_are_refused() {
        for (text, err) in [
            ("a..b", TemplateError::EmptyToken),
            (".a", TemplateError::EmptyToken),
            ("a.*", TemplateError::BadToken("*".into())),
            ("a.>", TemplateError::BadToken(">".into())),
            ("a.b c", TemplateError::BadToken("b c".into())),
            (
                "a.x{client_id}",
                TemplateError::BadToken("x{client_id}".into()),
            ),
            ("a.{clientid}", TemplateError::BadToken("{clientid}".into())),
            ("a.{0}", TemplateError::LevelZero),
            ("a.{topic}.b", TemplateError::TopicNotLast),
            ("$JS.x", TemplateError::BadToken("$JS".into())),
        ] {
            assert_eq!(Template::parse(text), Err(err), "{text}");
        }
    }
}
