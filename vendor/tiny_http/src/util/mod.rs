pub(crate) use self::body::{
    drain_deadline, fill_deadline, read_exact_deadline, BodyKind, BodyReader, ChunkedDecoder,
};
pub use self::messages_queue::MessagesQueue;
pub use self::task_pool::TaskPool;

use std::str::FromStr;

mod body;
mod messages_queue;
mod task_pool;

/// Parses a the value of a header.
/// Suitable for `Accept-*`, `TE`, etc.
///
/// For example with `text/plain, image/png; q=1.5` this function would
/// return `[ ("text/plain", 1.0), ("image/png", 1.5) ]`
pub fn parse_header_value(input: &str) -> Vec<(&str, f32)> {
    input
        .split(',')
        .filter_map(|elem| {
            let mut params = elem.split(';');

            let t = params.next()?;

            let mut value = 1.0_f32;

            for p in params {
                let p = p.trim_start();
                if let Some(q) = p.strip_prefix("q=") {
                    if let Ok(val) = f32::from_str(q.trim()) {
                        value = val;
                        break;
                    }
                }
            }

            Some((t.trim(), value))
        })
        .collect()
}

#[cfg(test)]
mod test {
    #[test]
    #[allow(clippy::float_cmp)]
    fn test_parse_header() {
        let result = super::parse_header_value("text/html, text/plain; q=1.5 , image/png ; q=2.0");

        assert_eq!(result.len(), 3);
        assert_eq!(result[0].0, "text/html");
        assert_eq!(result[0].1, 1.0);
        assert_eq!(result[1].0, "text/plain");
        assert_eq!(result[1].1, 1.5);
        assert_eq!(result[2].0, "image/png");
        assert_eq!(result[2].1, 2.0);
    }

    #[test]
    fn test_parse_header_garbage_does_not_panic() {
        for s in [
            "",
            ";",
            ";q=",
            "q=",
            "a;q",
            ",,,;;;",
            "a; q=nan",
            "a;q=\u{e9}",
        ] {
            let _ = super::parse_header_value(s);
        }
    }
}
