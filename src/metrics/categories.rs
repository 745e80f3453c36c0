//! Metric categories (protocol section 5): the names `OUTPOST_METRICS` and
//! the manager's `metrics` lists speak in, as a closed enum and a small set.
//!
//! The operator's set decides what is read from /proc at all; the manager's
//! set only narrows what heartbeats carry. Both are the same type so that
//! "within what the operator allows" is one intersection.

use std::fmt;

/// One category; the order is the order of section 5's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Cpu,
    Memory,
    Load,
    Filesystems,
    Disks,
    Network,
    Processes,
    Temperatures,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Cpu,
        Category::Memory,
        Category::Load,
        Category::Filesystems,
        Category::Disks,
        Category::Network,
        Category::Processes,
        Category::Temperatures,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Cpu => "cpu",
            Category::Memory => "memory",
            Category::Load => "load",
            Category::Filesystems => "filesystems",
            Category::Disks => "disks",
            Category::Network => "network",
            Category::Processes => "processes",
            Category::Temperatures => "temperatures",
        }
    }

    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Categories(u8);

impl Default for Categories {
    /// Section 9's default: everything.
    fn default() -> Categories {
        Categories::ALL
    }
}

impl Categories {
    pub const ALL: Categories = Categories(0xff);
    pub const NONE: Categories = Categories(0);

    pub fn has(self, c: Category) -> bool {
        self.0 & c.bit() != 0
    }

    pub fn with(self, c: Category) -> Categories {
        Categories(self.0 | c.bit())
    }

    pub fn intersect(self, other: Categories) -> Categories {
        Categories(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The operator's syntax: `all`, `none`, or a comma-separated list of
    /// names (spaces around names and empty items are tolerated, as in
    /// `cpu, memory,`). The error names the first word that is not a
    /// category, for the exit-78 line.
    pub fn parse(text: &str) -> Result<Categories, String> {
        let text = text.trim();
        match text {
            "all" => return Ok(Categories::ALL),
            "none" => return Ok(Categories::NONE),
            _ => {}
        }
        let mut set = Categories::NONE;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match Category::from_name(word) {
                Some(c) => set = set.with(c),
                None => {
                    return Err(format!(
                        "{word:?} is not a metric category; use `all`, `none` or a comma-separated list of {}",
                        Category::ALL.map(Category::name).join(", ")
                    ));
                }
            }
        }
        Ok(set)
    }

    /// The manager's list (sections 3.1, 3.2). Unknown names are dropped, as
    /// unknown fields are (forward compatibility: a newer manager may know
    /// categories this agent does not); they are returned for a log line.
    pub fn from_manager_list<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> (Categories, Vec<&'a str>) {
        let mut set = Categories::NONE;
        let mut unknown = Vec::new();
        for name in names {
            match Category::from_name(name) {
                Some(c) => set = set.with(c),
                None => unknown.push(name),
            }
        }
        (set, unknown)
    }
}

impl Categories {
    /// A manager answer's `metrics` field: a list of names chooses the
    /// heartbeat's categories (unknown names dropped, with a log line);
    /// `null` or anything that is not a list means "no choice": the
    /// agent's own configuration. A bad field never fails the whole answer.
    pub fn from_manager_value(value: &serde_json::Value) -> Option<Categories> {
        let list = match value {
            serde_json::Value::Array(list) => list,
            serde_json::Value::Null => return None,
            other => {
                log::warn!("manager sent `metrics` that is not a list ({other}); ignoring it");
                return None;
            }
        };
        let names = list.iter().filter_map(serde_json::Value::as_str);
        let (set, unknown) = Categories::from_manager_list(names);
        if !unknown.is_empty() {
            log::debug!("manager asked for unknown metric categories {unknown:?}; ignoring them");
        }
        Some(set)
    }
}

impl fmt::Display for Categories {
    /// `all`, `none`, or the comma list in section 5's order; `parse` reads
    /// it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Categories::ALL {
            return f.write_str("all");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = Category::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .map(Category::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_none_and_lists_and_prints_them_back() {
        assert_eq!(Categories::parse("all"), Ok(Categories::ALL));
        assert_eq!(Categories::parse(" none "), Ok(Categories::NONE));
        let set = Categories::parse("network, cpu,,memory").unwrap();
        assert!(set.has(Category::Cpu) && set.has(Category::Network));
        assert!(!set.has(Category::Disks));
        assert_eq!(set.to_string(), "cpu,memory,network");
        assert_eq!(Categories::parse(&set.to_string()), Ok(set));
        let every = Category::ALL.map(Category::name).join(",");
        assert_eq!(Categories::parse(&every), Ok(Categories::ALL));
        assert_eq!(Categories::ALL.to_string(), "all");
        assert_eq!(Categories::NONE.to_string(), "none");
    }

    #[test]
    fn a_bad_word_is_named() {
        let err = Categories::parse("cpu,CPU").unwrap_err();
        assert!(err.starts_with("\"CPU\" is not a metric category"), "{err}");
        assert!(Categories::parse("all,cpu").is_err());
    }

    #[test]
    fn manager_lists_drop_unknown_names() {
        let (set, unknown) = Categories::from_manager_list(["cpu", "gpu", "load"]);
        assert_eq!(set.to_string(), "cpu,load");
        assert_eq!(unknown, ["gpu"]);
        let (empty, _) = Categories::from_manager_list([]);
        assert!(empty.is_empty());
        let v = |text: &str| Categories::from_manager_value(&serde_json::from_str(text).unwrap());
        assert_eq!(
            v(r#"["memory", 7, "x"]"#),
            Some(Categories::parse("memory").unwrap())
        );
        assert_eq!(v("[]"), Some(Categories::NONE));
        assert_eq!(v("null"), None);
        assert_eq!(v(r#""cpu""#), None);
    }
}
