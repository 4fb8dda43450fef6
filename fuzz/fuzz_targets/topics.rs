//! Any string as a topic and as a filter: parsing never panics, a valid topic is also a
//! valid filter that matches it, and matching agrees with a token-by-token reading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streambus_types::{Topic, TopicFilter};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two strings from one input: a filter, and a topic after the first newline.
    let (filter_text, topic_text) = text.split_once('\n').unwrap_or((text, text));
    let topic = Topic::new(topic_text);
    let filter = TopicFilter::new(filter_text);
    if let Ok(topic) = &topic {
        let exact = TopicFilter::new(topic.as_str()).expect("a topic is a valid filter");
        assert!(exact.matches(topic), "{topic} must match itself");
    }
    if let (Ok(topic), Ok(filter)) = (topic, filter) {
        let f: Vec<&str> = filter.as_str().split('.').collect();
        let t: Vec<&str> = topic.as_str().split('.').collect();
        let system = t[0].starts_with('$') && (f[0] == "*" || f[0] == ">");
        let tokens_match = match f.last() {
            Some(&">") => t.len() >= f.len() && f[..f.len() - 1].iter().zip(&t).all(|(f, t)| *f == "*" || f == t),
            _ => f.len() == t.len() && f.iter().zip(&t).all(|(f, t)| *f == "*" || f == t),
        };
        assert_eq!(filter.matches(&topic), tokens_match && !system, "{filter} vs {topic}");
    }
});
