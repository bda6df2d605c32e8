//! The in-memory copy of the regional registry: tree → key → (value, mod revision).

use std::collections::{BTreeMap, HashMap};

/// One tree: key → (value, mod revision).
type TreeCopy = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

#[derive(Debug, Default)]
pub(super) struct Mirror {
    trees: HashMap<String, TreeCopy>,
}

impl Mirror {
    pub(super) fn get(&self, tree: &str, key: &[u8]) -> Option<(&[u8], i64)> {
        self.trees
            .get(tree)?
            .get(key)
            .map(|(v, rev)| (v.as_slice(), *rev))
    }

    pub(super) fn entries(&self, tree: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.trees.get(tree).map_or_else(Vec::new, |t| {
            t.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
        })
    }

    /// Applies a put seen at `rev` (an older revision than the one held is ignored).
    pub(super) fn put(&mut self, tree: &str, key: &[u8], value: &[u8], rev: i64) {
        let t = self.trees.entry(tree.to_string()).or_default();
        match t.get(key) {
            Some((_, held)) if *held > rev => {}
            _ => {
                t.insert(key.to_vec(), (value.to_vec(), rev));
            }
        }
    }

    pub(super) fn delete(&mut self, tree: &str, key: &[u8]) {
        if let Some(t) = self.trees.get_mut(tree) {
            t.remove(key);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.trees.values().map(BTreeMap::len).sum()
    }

    /// Rough bytes held (keys + values), for the load's log line.
    pub(super) fn bytes(&self) -> usize {
        self.trees
            .values()
            .flat_map(|t| t.iter())
            .map(|(k, (v, _))| k.len() + v.len() + 48)
            .sum()
    }
}

/// Splits `{prefix}{tree}/{key}` into (tree, key).
pub(super) fn split<'a>(prefix: &str, full: &'a [u8]) -> Option<(&'a str, &'a [u8])> {
    let rest = full.strip_prefix(prefix.as_bytes())?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    let tree = std::str::from_utf8(&rest[..slash]).ok()?;
    Some((tree, &rest[slash + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_tree_and_key() {
        assert_eq!(
            split("/seibo-net/", b"/seibo-net/consents/P001"),
            Some(("consents", &b"P001"[..]))
        );
        assert_eq!(split("/seibo-net/", b"/other/consents/P001"), None);
        assert_eq!(split("/seibo-net/", b"/seibo-net/noslash"), None);
    }

    #[test]
    fn an_older_revision_never_overwrites_a_newer_one() {
        let mut m = Mirror::default();
        m.put("t", b"k", b"new", 7);
        m.put("t", b"k", b"old", 5);
        assert_eq!(m.get("t", b"k"), Some((&b"new"[..], 7)));
        m.delete("t", b"k");
        assert_eq!(m.get("t", b"k"), None);
    }
}
