//! Handler names, each stored once: a run record names its handler by a number in this table
//! (kept in `meta` under [`META_KEY`]) instead of repeating the text.
//!
//! Every run record is written twice (accepted, finished) and rewritten again each time sled
//! rewrites the leaf it sits in, so on a lone writer's flash each of its bytes costs about four;
//! a handler's name was a third of a short run's record. The table only grows, and only when a
//! name is new: it is written to `meta` before the record that first uses a number, so a record
//! on disk never names a number the table on disk lacks (sled recovers a prefix of its writes,
//! and the order of writes stands in for a transaction, see the store's module doc). Names are
//! bounded by the handlers this executor knows, but a GLUE job's handler field is whatever its
//! admin sends: past [`MAX_NAMES`] records keep the name as text.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use super::v2;
use crate::store::{Result, StoreError};

/// Where the table lives in `meta`.
pub(in crate::store) const META_KEY: &[u8] = b"handler_names";

/// Names the table takes; later ones stay text in their records.
pub(in crate::store) const MAX_NAMES: usize = 1024;

/// The table, loaded at open.
pub(in crate::store) struct HandlerNames {
    meta: sled::Tree,
    table: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    numbers: HashMap<String, u64>,
    names: Vec<String>,
}

impl HandlerNames {
    /// Reads the table from `meta` (an empty one if it has none yet).
    ///
    /// # Errors
    /// I/O, or [`StoreError::Corrupt`] for a damaged table.
    pub(in crate::store) fn open(meta: sled::Tree) -> Result<Self> {
        let names = match meta.get(META_KEY)? {
            Some(v) => v2::names_of(&v).map_err(StoreError::Corrupt)?,
            None => Vec::new(),
        };
        let numbers = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u64))
            .collect();
        Ok(Self {
            meta,
            table: RwLock::new(Table { numbers, names }),
        })
    }

    /// The number of `name`, added to the table (and the table written) when it is new;
    /// `None` once the table is full.
    ///
    /// # Errors
    /// I/O writing the table.
    pub(in crate::store) fn number(&self, name: &str) -> Result<Option<u64>> {
        if let Some(&n) = self.read().numbers.get(name) {
            return Ok(Some(n));
        }
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        // Another writer may have added it since the read.
        if let Some(&n) = t.numbers.get(name) {
            return Ok(Some(n));
        }
        if t.names.len() >= MAX_NAMES {
            return Ok(None);
        }
        let mut names = t.names.clone();
        names.push(name.to_owned());
        // Under the lock: two new names at once must not each write a table without the other.
        self.meta.insert(META_KEY, v2::names(&names))?;
        let n = t.names.len() as u64;
        t.numbers.insert(name.to_owned(), n);
        t.names = names;
        Ok(Some(n))
    }

    /// The name of number `n`, if the table has it.
    pub(in crate::store) fn name(&self, n: u64) -> Option<String> {
        self.read().names.get(usize::try_from(n).ok()?).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> (sled::Db, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let meta = db.open_tree("meta").unwrap();
        (db, meta)
    }

    #[test]
    fn numbers_are_stable_and_survive_a_reopen() {
        let (_db, meta) = meta();
        let names = HandlerNames::open(meta.clone()).unwrap();
        assert_eq!(names.number("demoJobHandler").unwrap(), Some(0));
        assert_eq!(names.number("shell").unwrap(), Some(1));
        assert_eq!(names.number("demoJobHandler").unwrap(), Some(0));
        let again = HandlerNames::open(meta).unwrap();
        assert_eq!(again.name(0).as_deref(), Some("demoJobHandler"));
        assert_eq!(again.name(1).as_deref(), Some("shell"));
        assert_eq!(again.name(2), None);
        assert_eq!(again.number("").unwrap(), Some(2));
    }

    #[test]
    fn a_full_table_leaves_new_names_as_text() {
        let (_db, meta) = meta();
        let names = HandlerNames::open(meta.clone()).unwrap();
        for i in 0..MAX_NAMES {
            assert_eq!(names.number(&format!("h{i}")).unwrap(), Some(i as u64));
        }
        assert_eq!(names.number("one too many").unwrap(), None);
        assert_eq!(names.number("h7").unwrap(), Some(7));
        assert_eq!(
            HandlerNames::open(meta).unwrap().name(1023).as_deref(),
            Some("h1023")
        );
    }

    #[test]
    fn a_damaged_table_is_an_error() {
        let (_db, meta) = meta();
        meta.insert(META_KEY, &[v2::FORMAT, 200, 1, 2][..]).unwrap();
        assert!(matches!(
            HandlerNames::open(meta),
            Err(StoreError::Corrupt(_))
        ));
    }
}
