//! Redis glob patterns: escaping user input into them, and matching them
//! (for the embedded store, which must answer a pattern exactly as Redis
//! `SCAN … MATCH` does).
//!
//! A key part taken from user input must be escaped before it goes into a
//! pattern: `invalidate_matching("user:*")` with a user id of `*` would
//! otherwise drop every user.

/// `text` with every glob metacharacter (`* ? [ ] \`) escaped, so it
/// matches only itself inside a pattern.
///
/// ```
/// assert_eq!(cachette::escape_glob("a*b[1]"), r"a\*b\[1\]");
/// ```
pub fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `text` matches the glob `pattern`, with Redis's rules: `*` any
/// run, `?` any one byte, `[abc]`, `[^a]`, `[a-z]` classes, `\` escapes.
pub(crate) fn matches(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matching with one backtrack point (the last `*`): linear
    // in practice, and no recursion depth to exhaust on hostile input.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, next)) = class(pattern, p, text[t])
                        && hit
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                // An escape that does not match is no literal backslash.
                b'\\' if p + 1 < pattern.len() => {}
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class opening at `pattern[open]`; returns
/// whether it matched and where the pattern goes on. An unclosed class
/// runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pattern[i] == c;
            i += 1;
        }
    }
    // Past the closing bracket (or at the end if there is none).
    let next = (i + 1).min(pattern.len());
    Some((hit != negate, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        matches(p.as_bytes(), t.as_bytes())
    }

    #[test]
    fn follows_redis_glob_rules() {
        assert!(m("user:*", "user:42"));
        assert!(m("*", ""));
        assert!(!m("user:*", "users:42"));
        assert!(m("u?er", "user"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("[ab]x", "bx"));
        assert!(!m("[^ab]x", "bx"));
        assert!(m("[a-c]x", "cx"));
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
        assert!(!m(r"\a", "\\"), "an escape is not a literal backslash");
    }

    #[test]
    fn escaped_input_matches_only_itself() {
        for raw in ["*", "?", "[x]", r"a\b", "plain", "a*b?c[d]e\\"] {
            let p = escape_glob(raw);
            assert!(m(&p, raw), "{raw}");
            assert!(!m(&p, &format!("{raw}x")), "{raw}");
        }
        assert!(!m(&escape_glob("*"), "anything"));
    }
}
