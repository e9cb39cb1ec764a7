//! The gateway's own cursors for `tools/list`, `resources/list`,
//! `resources/templates/list` and `prompts/list`.
//!
//! The gateway reads every upstream's whole lists (following their cursors)
//! and serves the aggregate in pages of `list_page_size`. A cursor names the
//! list, where the next page starts, and a fingerprint of the list's order
//! (the names or URIs, in order): a list that changed underneath (an
//! upstream's `list_changed`, a reload, a restart) no longer matches, and
//! the cursor is refused with -32602 rather than answered with a page that
//! skips or repeats entries. A change that moves nothing (a description)
//! keeps cursors valid. Cursors carry nothing secret and select nothing a
//! client could not list anyway, so they are not sealed.

use std::hash::{DefaultHasher, Hash, Hasher};

use rmcp::ErrorData;

/// Marks the gateway's cursors (and their format's version).
const PREFIX: &str = "mcpsock1";

/// One page of `items` (in list order) from where `cursor` points, and the
/// cursor of the next page when there is one. `kind` names the list, `key`
/// gives each entry's name or URI.
pub(crate) fn page<T>(
    kind: &str,
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    cursor: Option<&str>,
    size: usize,
) -> Result<(Vec<T>, Option<String>), ErrorData> {
    let fingerprint = fingerprint(kind, items.iter().map(&key));
    let start = match cursor {
        None => 0,
        Some(cursor) => {
            let (cursor_kind, cursor_fingerprint, offset) = parse(cursor).ok_or_else(|| {
                ErrorData::invalid_params(
                    format!("cursor {cursor:?} is not one mcpsock issued; list again without a cursor"),
                    None,
                )
            })?;
            if cursor_kind != kind {
                return Err(ErrorData::invalid_params(
                    format!(
                        "this cursor belongs to the {cursor_kind} list, not {kind}; list again without a cursor"
                    ),
                    None,
                ));
            }
            if cursor_fingerprint != fingerprint || offset > items.len() {
                return Err(ErrorData::invalid_params(
                    format!(
                        "the {kind} list changed since this cursor was issued; list again without a cursor"
                    ),
                    None,
                ));
            }
            offset
        }
    };
    let size = size.max(1);
    let end = start.saturating_add(size).min(items.len());
    let next = (end < items.len()).then(|| format!("{PREFIX}.{kind}.{fingerprint:016x}.{end}"));
    let page = items.into_iter().skip(start).take(end - start).collect();
    Ok((page, next))
}

fn fingerprint<'a>(kind: &str, keys: impl Iterator<Item = &'a str>) -> u64 {
    // Fixed keys: the same list has the same fingerprint in every process,
    // so a cursor outlives a restart that changed nothing.
    let mut hasher = DefaultHasher::new();
    kind.hash(&mut hasher);
    for key in keys {
        key.hash(&mut hasher);
    }
    hasher.finish()
}

fn parse(cursor: &str) -> Option<(&str, u64, usize)> {
    let mut parts = cursor.split('.');
    if parts.next()? != PREFIX {
        return None;
    }
    let kind = parts.next()?;
    let fingerprint = u64::from_str_radix(parts.next()?, 16).ok()?;
    let offset = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((kind, fingerprint, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tool_{i}")).collect()
    }

    fn all_pages(items: Vec<String>, size: usize) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = page("tools", items.clone(), |s| s, cursor.as_deref(), size).unwrap();
            pages.push(page);
            match next {
                Some(next) => cursor = Some(next),
                None => return pages,
            }
        }
    }

    #[test]
    fn pages_cover_the_list_once_in_order() {
        for (n, size, count) in [(0, 3, 1), (3, 3, 1), (4, 3, 2), (250, 100, 3), (5, 1, 5)] {
            let pages = all_pages(names(n), size);
            assert_eq!(pages.len(), count, "{n} items in pages of {size}");
            assert_eq!(pages.concat(), names(n));
            assert!(pages.iter().all(|page| page.len() <= size));
        }
    }

    #[test]
    fn a_stale_foreign_or_bogus_cursor_is_refused_clearly() {
        let (_, next) = page("tools", names(5), |s| s, None, 2).unwrap();
        let next = next.unwrap();
        let check = |items: Vec<String>, kind: &str, cursor: &str, expected: &str| {
            let error = page(kind, items, |s| s, Some(cursor), 2).unwrap_err();
            assert_eq!(error.code.0, -32602);
            assert!(error.message.contains(expected), "{}", error.message);
        };
        let mut changed = names(5);
        changed.remove(0);
        check(changed, "tools", &next, "the tools list changed");
        check(names(5), "prompts", &next, "belongs to the tools list");
        check(names(5), "tools", "garbage", "is not one mcpsock issued");
        check(names(5), "tools", "mcpsock1.tools.zz.2", "is not one mcpsock issued");
        let (issued, _) = next.rsplit_once('.').unwrap();
        check(names(5), "tools", &format!("{issued}.99"), "changed");
        // A change that moves nothing keeps the cursor.
        assert!(page("tools", names(5), |s| s, Some(&next), 2).is_ok());
    }
}
