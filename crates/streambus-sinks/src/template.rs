//! Destination names made from a record's topic: `sensors.{1}.{2}`.
//!
//! A [`Template`] is text with placeholders, parsed once when the sink's entry is read:
//!
//! - `{topic}`: the whole topic (`sensors.dev1.temperature`);
//! - `{N}` (N from 1): the topic's N-th token (`{2}` is `dev1` above);
//! - `{{` and `}}`: a literal brace.
//!
//! Each sink names what its template makes (a subject, a stream key, a routing key, an
//! MQTT topic) and its default; a sink whose destination separates levels with another
//! character than `.` says so (`separator`). A record whose topic has fewer tokens than
//! the template asks for cannot be named: that is a poison record for its sink.

use std::fmt;

use streambus_types::Topic;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text copied as is.
    Literal(String),
    /// The whole topic.
    Topic,
    /// The topic's token at this index (from 0).
    Token(usize),
}

/// A parsed destination template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    parts: Vec<Part>,
    /// What a `.` of `{topic}` becomes (MQTT uses `/`).
    separator: char,
    /// The text it was parsed from, for messages.
    source: String,
}

/// Why a template cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' at byte {0}")]
    Unclosed(usize),
    /// A `}` without its `{` (write `}}` for a literal one).
    #[error("unmatched '}}' at byte {0} (write '}}}}' for a literal brace)")]
    Unmatched(usize),
    /// A placeholder other than `{topic}` or `{N}` with N ≥ 1.
    #[error("unknown placeholder {{{0}}}: use {{topic}} or a token number from {{1}}")]
    Placeholder(String),
    /// The template makes nothing.
    #[error("the template is empty")]
    Empty,
}

/// Why a record's topic cannot fill a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {topic} has no token {{{wanted}}} for template {template:?}")]
pub struct RenderError {
    /// The record's topic.
    pub topic: String,
    /// The token number asked for (from 1).
    pub wanted: usize,
    /// The template.
    pub template: String,
}

impl Template {
    /// Parses `source`; `{topic}` renders with `.` between tokens.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        Template::parse_with_separator(source, '.')
    }

    /// Parses `source`; `{topic}` renders with `separator` between tokens.
    pub fn parse_with_separator(source: &str, separator: char) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unmatched(at)),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => return Err(TemplateError::Unclosed(at)),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(match name.as_str() {
                        "topic" => Part::Topic,
                        n => match n.parse::<usize>() {
                            Ok(i) if i >= 1 && n.bytes().all(|b| b.is_ascii_digit()) => Part::Token(i - 1),
                            _ => return Err(TemplateError::Placeholder(name)),
                        },
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.is_empty() {
            return Err(TemplateError::Empty);
        }
        Ok(Template {
            parts,
            separator,
            source: source.to_owned(),
        })
    }

    /// The name for `topic`.
    pub fn render(&self, topic: &Topic) -> Result<String, RenderError> {
        // The common case, `{topic}` alone with `.`, is the topic itself.
        if let [Part::Topic] = self.parts.as_slice()
            && self.separator == '.'
        {
            return Ok(topic.as_str().to_owned());
        }
        let mut out = String::with_capacity(topic.as_str().len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Topic => {
                    for (i, token) in topic.as_str().split('.').enumerate() {
                        if i > 0 {
                            out.push(self.separator);
                        }
                        out.push_str(token);
                    }
                }
                Part::Token(i) => match topic.as_str().split('.').nth(*i) {
                    Some(token) => out.push_str(token),
                    None => {
                        return Err(RenderError {
                            topic: topic.to_string(),
                            wanted: i + 1,
                            template: self.source.clone(),
                        });
                    }
                },
            }
        }
        Ok(out)
    }

    /// Whether the template is `{topic}` alone (the destination name is the topic).
    pub fn is_topic(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Topic])
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    /// A template with `.` as the separator; sinks that want another re-parse it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Template::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    /// Placeholders, literal braces and the separator render as documented.
    #[test]
    fn renders() {
        let t = Template::parse("out.{2}.{1}").unwrap();
        assert_eq!(t.render(&topic("sensors.dev1.temp")).unwrap(), "out.dev1.sensors");
        let t = Template::parse("{topic}").unwrap();
        assert!(t.is_topic());
        assert_eq!(t.render(&topic("a.b")).unwrap(), "a.b");
        let t = Template::parse_with_separator("bus/{topic}", '/').unwrap();
        assert_eq!(t.render(&topic("a.b.c")).unwrap(), "bus/a/b/c");
        let t = Template::parse("{{x}}-{3}").unwrap();
        assert_eq!(t.render(&topic("a.b.c")).unwrap(), "{x}-c");
    }

    /// A topic too short for the template names what is missing.
    #[test]
    fn short_topics_are_refused() {
        let t = Template::parse("x.{3}").unwrap();
        let e = t.render(&topic("a.b")).unwrap_err();
        assert_eq!(e.wanted, 3);
        assert!(e.to_string().contains("a.b"), "{e}");
    }

    /// Malformed templates are refused with the reason.
    #[test]
    fn bad_templates() {
        assert_eq!(Template::parse("a.{1"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("a}"), Err(TemplateError::Unmatched(1)));
        assert_eq!(Template::parse("{0}"), Err(TemplateError::Placeholder("0".into())));
        assert_eq!(Template::parse("{x}"), Err(TemplateError::Placeholder("x".into())));
        assert_eq!(Template::parse("{+1}"), Err(TemplateError::Placeholder("+1".into())));
        assert_eq!(Template::parse(""), Err(TemplateError::Empty));
    }

    proptest! {
        /// Any text parses or is refused without a panic, and what parses renders any
        /// topic or names the token it lacks.
        #[test]
        fn never_panics(source in "\\PC{0,24}", tokens in proptest::collection::vec("[a-z0-9]{1,5}", 1..6)) {
            let topic = topic(&tokens.join("."));
            if let Ok(t) = Template::parse(&source) {
                match t.render(&topic) {
                    Ok(_) => {}
                    Err(e) => prop_assert!(e.wanted > tokens.len()),
                }
            }
        }

        /// `{topic}` with any separator rejoins the tokens with it.
        #[test]
        fn topic_with_separator(tokens in proptest::collection::vec("[a-z0-9]{1,5}", 1..6)) {
            let t = Template::parse_with_separator("{topic}", '/').unwrap();
            prop_assert_eq!(t.render(&topic(&tokens.join("."))).unwrap(), tokens.join("/"));
        }
    }
}
