//! Keeping secrets out of logs and error messages: the userinfo of URLs (`http://user:pass@host`)
//! and known secret strings (the etcd password) are replaced by `<redacted>` in any text before
//! it is logged or returned as an error.

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// `text` with the userinfo of every `scheme://userinfo@host` replaced by `<redacted>`.
pub fn urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace, ',' or quote.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str(REDACTED);
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Known secret values, scrubbed from texts (with the URL userinfo rule as well).
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// Remember `secret` (empty and very short values are ignored: replacing them would garble
    /// every message without protecting anything).
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= 3 && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every known secret and every URL userinfo replaced by `<redacted>`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = urls(text);
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_of_urls_is_redacted() {
        assert_eq!(
            urls("http://root:hunter2@192.0.2.100:2379,https://a@h/x"),
            "http://<redacted>@192.0.2.100:2379,https://<redacted>@h/x"
        );
        assert_eq!(urls("http://192.0.2.100:2379"), "http://192.0.2.100:2379");
        assert_eq!(
            urls("error connecting to \"http://u:p@h\": refused"),
            "error connecting to \"http://<redacted>@h\": refused"
        );
        assert_eq!(urls("mail me at a@b.c"), "mail me at a@b.c");
        assert_eq!(urls("x://"), "x://");
    }

    #[test]
    fn known_secrets_are_scrubbed_and_never_debug_printed() {
        let mut s = Secrets::default();
        s.add("hunter2");
        s.add("");
        let text = s.scrub("auth failed for password hunter2 at http://root:hunter2@h:1");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(format!("{s:?}"), "Secrets(1 redacted)");
    }
}
