//! Dotted field paths (`"a.b.0.c"`) without array expansion: reading one value, setting one,
//! removing one. Query matching, which expands arrays, builds on these in `query`.

use crate::error::{CommandError, PATH_NOT_VIABLE, Result};
use bson::{Bson, Document};

/// The value at `path`, following numeric components into arrays. No array expansion:
/// `get_path({a: [{b: 1}]}, "a.b")` is `None`.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Sets `path` to `value`, creating intermediate documents as `$set` does. An array on the
/// way is indexed by a numeric component (padding with nulls); any other scalar on the way
/// is an error (code 28 PathNotViable), as mongod reports it.
pub fn set_path(doc: &mut Document, path: &str, value: Bson) -> Result<()> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Some(rest) = rest else {
        doc.insert(head, value);
        return Ok(());
    };
    if !doc.contains_key(head) {
        doc.insert(head, Bson::Document(Document::new()));
    }
    set_in_value(doc.get_mut(head).expect("present"), head, rest, value)
}

fn set_in_value(target: &mut Bson, walked: &str, path: &str, value: Bson) -> Result<()> {
    match target {
        Bson::Document(d) => set_path(d, path, value),
        Bson::Array(arr) => {
            let (head, rest) = match path.split_once('.') {
                Some((h, r)) => (h, Some(r)),
                None => (path, None),
            };
            let Ok(index) = head.parse::<usize>() else {
                return Err(CommandError::new(
                    PATH_NOT_VIABLE,
                    format!("Cannot create field '{head}' in element {{{walked}: {target:?}}}"),
                ));
            };
            while arr.len() <= index {
                arr.push(Bson::Null);
            }
            match rest {
                None => {
                    arr[index] = value;
                    Ok(())
                }
                Some(rest) => {
                    if !matches!(arr[index], Bson::Document(_) | Bson::Array(_)) {
                        arr[index] = Bson::Document(Document::new());
                    }
                    set_in_value(&mut arr[index], head, rest, value)
                }
            }
        }
        other => Err(CommandError::new(
            PATH_NOT_VIABLE,
            format!(
                "Cannot create field '{}' in element {{{walked}: {other}}}",
                path.split('.').next().unwrap_or(path)
            ),
        )),
    }
}

/// Removes the value at `path` (for `$unset`); a missing path is not an error. An array
/// element is set to null rather than removed, as `$unset` does.
pub fn remove_path(doc: &mut Document, path: &str) -> Option<Bson> {
    match path.split_once('.') {
        None => doc.remove(path),
        Some((head, rest)) => remove_in_value(doc.get_mut(head)?, rest),
    }
}

fn remove_in_value(target: &mut Bson, path: &str) -> Option<Bson> {
    match target {
        Bson::Document(d) => remove_path(d, path),
        Bson::Array(arr) => {
            let (head, rest) = match path.split_once('.') {
                Some((h, r)) => (h, Some(r)),
                None => (path, None),
            };
            let index = head.parse::<usize>().ok()?;
            let slot = arr.get_mut(index)?;
            match rest {
                None => Some(std::mem::replace(slot, Bson::Null)),
                Some(rest) => remove_in_value(slot, rest),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn get_set_remove_round_trip() {
        let mut d = doc! {"a": {"b": [1, {"c": 2}]}};
        assert_eq!(get_path(&d, "a.b.1.c"), Some(&Bson::Int32(2)));
        assert_eq!(get_path(&d, "a.b.c"), None);
        set_path(&mut d, "a.x.y", Bson::Int32(3)).unwrap();
        assert_eq!(get_path(&d, "a.x.y"), Some(&Bson::Int32(3)));
        set_path(&mut d, "a.b.3", Bson::Int32(4)).unwrap();
        assert_eq!(get_path(&d, "a.b.2"), Some(&Bson::Null));
        assert_eq!(remove_path(&mut d, "a.x.y"), Some(Bson::Int32(3)));
        assert_eq!(get_path(&d, "a.x"), Some(&Bson::Document(doc! {})));
    }

    #[test]
    fn setting_through_a_scalar_is_path_not_viable() {
        let mut d = doc! {"a": 1};
        let err = set_path(&mut d, "a.b", Bson::Int32(1)).unwrap_err();
        assert_eq!(err.code, 28);
    }
}
