//! The names the gateway offers for upstream tools and prompts.
//!
//! A name is `<prefix><separator><name>`, or the upstream's own name for a
//! server configured without a prefix. Tool names are then made to follow
//! the MCP tool-name rules (1–128 characters of `A-Z a-z 0-9 _ - .`; anything
//! else becomes `_`). Two upstream names that end up equal are told apart by
//! a `_2`, `_3`, … suffix on the later one, in the order of server names and
//! then of each server's own listing, so the same catalogs always give the
//! same names.

use std::collections::HashMap;

/// Longest tool name the MCP tool-name rules allow.
pub(crate) const MAX_TOOL_NAME: usize = 128;

/// Which of an upstream's tools are offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolFilter {
    /// Only these (upstream names), when set.
    pub enabled: Option<Vec<String>>,
    /// Never these (upstream names).
    pub disabled: Vec<String>,
}

impl ToolFilter {
    pub(crate) fn allows(&self, name: &str) -> bool {
        self.enabled.as_ref().is_none_or(|enabled| enabled.iter().any(|allowed| allowed == name))
            && !self.disabled.iter().any(|denied| denied == name)
    }
}

/// One offered name and what it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) exposed: String,
    /// Index of the upstream in the gateway's (name-sorted) list.
    pub(crate) upstream: usize,
    pub(crate) original: String,
}

/// The offered names of one kind (tools or prompts), in listing order.
#[derive(Debug, Default)]
pub(crate) struct NameIndex {
    pub(crate) entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl NameIndex {
    /// `upstreams` yields, per upstream in order, its prefix (`None` for
    /// none) and its names in its own order.
    pub(crate) fn build<'a>(
        upstreams: impl IntoIterator<Item = (Option<&'a str>, Vec<String>)>,
        separator: &str,
        sanitize_names: bool,
    ) -> Self {
        let mut index = Self::default();
        for (upstream, (prefix, names)) in upstreams.into_iter().enumerate() {
            for original in names {
                let joined = match prefix {
                    Some(prefix) => format!("{prefix}{separator}{original}"),
                    None => original.clone(),
                };
                let base = if sanitize_names { sanitize(&joined) } else { joined };
                let exposed = index.unique(base, sanitize_names);
                index.by_name.insert(exposed.clone(), index.entries.len());
                index.entries.push(Entry { exposed, upstream, original });
            }
        }
        index
    }

    fn unique(&self, base: String, bounded: bool) -> String {
        if !self.by_name.contains_key(&base) {
            return base;
        }
        (2..)
            .map(|n| {
                let suffix = format!("_{n}");
                let mut stem = base.clone();
                if bounded {
                    truncate(&mut stem, MAX_TOOL_NAME - suffix.len());
                }
                stem + &suffix
            })
            .find(|candidate| !self.by_name.contains_key(candidate))
            .unwrap_or(base)
    }

    pub(crate) fn get(&self, exposed: &str) -> Option<&Entry> {
        self.by_name.get(exposed).map(|&position| &self.entries[position])
    }

    /// The offered name of `original` from upstream `upstream`.
    pub(crate) fn exposed(&self, upstream: usize, original: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| entry.upstream == upstream && entry.original == original)
            .map(|entry| entry.exposed.as_str())
    }
}

/// The MCP tool-name rules: 1–128 characters of `A-Z a-z 0-9 _ - .`.
pub(crate) fn sanitize(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .collect();
    if clean.is_empty() {
        clean.push('_');
    }
    truncate(&mut clean, MAX_TOOL_NAME);
    clean
}

/// Cuts an ASCII string to `length` bytes.
fn truncate(text: &mut String, length: usize) {
    if text.len() > length {
        text.truncate(length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(upstreams: &[(Option<&str>, &[&str])], expected: &[&str]) {
        let index = NameIndex::build(
            upstreams.iter().map(|(prefix, names)| (*prefix, names.iter().map(|n| n.to_string()).collect())),
            "__",
            true,
        );
        let names: Vec<&str> = index.entries.iter().map(|entry| entry.exposed.as_str()).collect();
        assert_eq!(names, expected);
        for entry in &index.entries {
            assert_eq!(index.get(&entry.exposed), Some(entry));
        }
    }

    #[test]
    fn names_are_prefixed_sanitized_and_unique() {
        check(&[(Some("a"), &["echo", "add"]), (Some("b"), &["echo"])], &["a__echo", "a__add", "b__echo"]);
        check(&[(None, &["echo"]), (None, &["echo", "echo_2"])], &["echo", "echo_2", "echo_2_2"]);
        check(
            &[(Some("srv"), &["get weather", "naïve/x", ""])],
            &["srv__get_weather", "srv__na_ve_x", "srv__"],
        );
        check(&[(None, &[""])], &["_"]);
        check(&[(None, &["a__b"]), (Some("a"), &["b"])], &["a__b", "a__b_2"]);
        let long = "x".repeat(200);
        let index = NameIndex::build([(None, vec![long.clone(), long.clone()])], "__", true);
        assert_eq!(index.entries[0].exposed, "x".repeat(128));
        assert_eq!(index.entries[1].exposed, format!("{}_2", "x".repeat(126)));
        assert_eq!(index.entries[1].original, long);
    }

    #[test]
    fn filters() {
        let filter = ToolFilter { enabled: Some(vec!["a".into(), "b".into()]), disabled: vec!["b".into()] };
        assert!(filter.allows("a"));
        assert!(!filter.allows("b"));
        assert!(!filter.allows("c"));
        assert!(ToolFilter::default().allows("anything"));
    }
}
