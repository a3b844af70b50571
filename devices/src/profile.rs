//! Device profiles: what a device model speaks, separate from where a given device is plugged in.
//!
//! A profile is a TOML file with a `name`, a `description` and exactly one device section
//! (`[scanner]`, `[plc]` or `[xray]`). The profiles in `devices/profiles/` are compiled into the binary;
//! an installation can add its own directory of profiles, which override built-ins by name.
//! Unknown keys are errors, so a typo in a register map never passes silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::framing::ScannerFraming;
use crate::plc::PlcMap;
use crate::xray::XrayMap;

/// Profiles compiled into every build, as `(file name, contents)`.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "scanner-stx-etx.toml",
        include_str!("../profiles/scanner-stx-etx.toml"),
    ),
    (
        "scanner-crlf.toml",
        include_str!("../profiles/scanner-crlf.toml"),
    ),
    (
        "dws-stx-etx.toml",
        include_str!("../profiles/dws-stx-etx.toml"),
    ),
    (
        "sorter-plc.toml",
        include_str!("../profiles/sorter-plc.toml"),
    ),
    (
        "xray-modbus.toml",
        include_str!("../profiles/xray-modbus.toml"),
    ),
];

/// One device profile, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub kind: ProfileKind,
}

/// What the profile describes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileKind {
    Scanner(ScannerFraming),
    Plc(PlcMap),
    Xray(XrayMap),
}

impl Profile {
    /// The scanner framing, if this is a scanner profile.
    pub fn scanner(&self) -> Option<&ScannerFraming> {
        match &self.kind {
            ProfileKind::Scanner(s) => Some(s),
            _ => None,
        }
    }

    /// The PLC register map, if this is a PLC profile.
    pub fn plc(&self) -> Option<&PlcMap> {
        match &self.kind {
            ProfileKind::Plc(p) => Some(p),
            _ => None,
        }
    }

    /// The X-ray register map, if this is an X-ray profile.
    pub fn xray(&self) -> Option<&XrayMap> {
        match &self.kind {
            ProfileKind::Xray(x) => Some(x),
            _ => None,
        }
    }

    /// Short word for messages: "scanner", "plc" or "xray".
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ProfileKind::Scanner(_) => "scanner",
            ProfileKind::Plc(_) => "plc",
            ProfileKind::Xray(_) => "xray",
        }
    }

    /// Parses and validates one profile file's text. `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Profile, ProfileError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ProfileError::Syntax {
            origin: origin.to_string(),
            reason: e.message().to_string(),
        })?;
        let raw: RawProfile =
            serde_path_to_error::deserialize(de).map_err(|e| ProfileError::Invalid {
                origin: origin.to_string(),
                key: e.path().to_string(),
                reason: e.inner().message().to_string(),
            })?;
        let invalid = |key: &str, reason: String| ProfileError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            reason,
        };
        if raw.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        let kind = match (raw.scanner, raw.plc, raw.xray) {
            (Some(s), None, None) => ProfileKind::Scanner(
                s.validate()
                    .map_err(|(k, r)| invalid(&format!("scanner.{k}"), r))?,
            ),
            (None, Some(p), None) => ProfileKind::Plc(
                p.validate()
                    .map_err(|(k, r)| invalid(&format!("plc.{k}"), r))?,
            ),
            (None, None, Some(x)) => ProfileKind::Xray(
                x.validate()
                    .map_err(|(k, r)| invalid(&format!("xray.{k}"), r))?,
            ),
            _ => {
                return Err(invalid(
                    "scanner|plc|xray",
                    "a profile has exactly one device section: [scanner], [plc] or [xray]".into(),
                ))
            }
        };
        Ok(Profile {
            name: raw.name,
            description: raw.description,
            kind,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    scanner: Option<crate::framing::RawScannerFraming>,
    plc: Option<crate::plc::RawPlcMap>,
    xray: Option<crate::xray::RawXrayMap>,
}

/// Errors from loading profiles. Each names where the profile came from.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{origin}: not valid TOML: {reason}")]
    Syntax { origin: String, reason: String },
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        origin: String,
        key: String,
        reason: String,
    },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: profile `{name}` is defined twice")]
    Duplicate { origin: String, name: String },
}

/// A set of profiles by name.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
}

impl Profiles {
    /// The profiles compiled into the binary.
    pub fn builtin() -> Profiles {
        let mut set = Profiles::default();
        for (file, text) in BUILTIN {
            // Built-in profiles are checked by this crate's tests; a broken one is a build bug.
            let p = Profile::parse(&format!("builtin:{file}"), text)
                .unwrap_or_else(|e| panic!("built-in profile is invalid: {e}"));
            set.by_name.insert(p.name.clone(), p);
        }
        set
    }

    /// The built-in profiles, overridden and extended by every `*.toml` file in `dir`.
    pub fn with_dir(dir: &Path) -> Result<Profiles, ProfileError> {
        let mut set = Profiles::builtin();
        let entries = std::fs::read_dir(dir).map_err(|source| ProfileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut seen = BTreeMap::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Io {
                path: path.clone(),
                source,
            })?;
            let origin = path.display().to_string();
            let p = Profile::parse(&origin, &text)?;
            if seen.insert(p.name.clone(), ()).is_some() {
                return Err(ProfileError::Duplicate {
                    origin,
                    name: p.name,
                });
            }
            set.by_name.insert(p.name.clone(), p);
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.by_name.get(name)
    }

    /// Profile names, sorted, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse() {
        let set = Profiles::builtin();
        assert!(set.get("scanner-stx-etx").unwrap().scanner().is_some());
        assert!(set.get("scanner-crlf").unwrap().scanner().is_some());
        let dws = set.get("dws-stx-etx").unwrap().scanner().unwrap();
        assert_eq!(dws.weight.map(|w| w.separator), Some(b','));
        assert!(set.get("sorter-plc").unwrap().plc().is_some());
        assert!(set.get("xray-modbus").unwrap().xray().is_some());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Profile::parse(
            "t.toml",
            "name = \"x\"\n[scanner]\nsufix = \"\\r\\n\"\nno_read = \"NR\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml"), "{err}");
        assert!(err.contains("sufix"), "{err}");
    }

    #[test]
    fn exactly_one_section() {
        let err = Profile::parse("t.toml", "name = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("exactly one device section"));
    }
}
