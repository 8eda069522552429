//! The optional YAML configuration file (`--config.file`): the zones to
//! watch, by ID or name, each with its expected Argo state if it differs from
//! `--argo.expect`. Unknown keys and bad values are refused with the file,
//! line and reason.

use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::ZoneId;
use crate::zones::{Expectation, ZoneRef};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub zones: Vec<ZoneEntry>,
}

/// One zone of the file: `- id: <zone ID>` or `- name: <zone name>`, and
/// optionally `expect: on|off|any`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawZoneEntry")]
pub struct ZoneEntry {
    pub zone: ZoneRef,
    pub expect: Option<Expectation>,
}

/// Each field is checked as it is read, so a bad value is reported at its own line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZoneEntry {
    #[serde(default, deserialize_with = "zone_id")]
    id: Option<ZoneId>,
    #[serde(default, deserialize_with = "zone_name")]
    name: Option<String>,
    #[serde(default, deserialize_with = "expectation")]
    expect: Option<Expectation>,
}

impl TryFrom<RawZoneEntry> for ZoneEntry {
    type Error = String;

    fn try_from(raw: RawZoneEntry) -> Result<Self, Self::Error> {
        let zone = match (raw.id, raw.name) {
            (Some(id), None) => ZoneRef::Id(id),
            (None, Some(name)) => ZoneRef::Name(name),
            (Some(_), Some(_)) => return Err("give a zone `id` or `name`, not both".to_owned()),
            (None, None) => return Err("a zone needs `id` or `name`".to_owned()),
        };
        Ok(Self {
            zone,
            expect: raw.expect,
        })
    }
}

/// `on`, `off` or `any`; YAML 1.1 readers turn a bare on/off into a boolean,
/// so `true` and `false` are taken to mean the same. A visitor rather than
/// an untagged enum, so a bad value is reported at its own line.
fn expectation<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Expectation>, D::Error> {
    struct ExpectationVisitor;

    impl serde::de::Visitor<'_> for ExpectationVisitor {
        type Value = Expectation;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("on, off or any")
        }

        fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Expectation, E> {
            Ok(if on {
                Expectation::On
            } else {
                Expectation::Off
            })
        }

        fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Expectation, E> {
            word.parse().map_err(E::custom)
        }
    }

    deserializer.deserialize_any(ExpectationVisitor).map(Some)
}

fn zone_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ZoneId>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(D::Error::custom)
}

fn zone_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.parse::<ZoneRef>().map_err(D::Error::custom)? {
        ZoneRef::Name(name) => Ok(Some(name)),
        ZoneRef::Id(_) => Err(D::Error::custom(format!(
            "{text:?} is a zone ID: write it as `id:`"
        ))),
    }
}

/// Why the configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[error("--config.file: {path}: {reason}")]
pub struct FileError {
    pub path: PathBuf,
    /// Includes the line and column when the problem is in the YAML.
    pub reason: String,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let error = |reason: String| FileError {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let file: Self = serde_yaml_ng::from_str(text).map_err(|err| match err.location() {
            Some(at) if !err.to_string().contains("line") => {
                format!("line {}: {err}", at.line())
            }
            _ => err.to_string(),
        })?;
        file.refuse_duplicates()?;
        Ok(file)
    }

    /// A zone listed twice is a mistake (which entry's `expect` was meant?).
    fn refuse_duplicates(&self) -> Result<(), String> {
        for (later, entry) in self.zones.iter().enumerate() {
            if let Some(first) = self.zones[..later]
                .iter()
                .position(|e| e.zone == entry.zone)
            {
                return Err(format!(
                    "zone {} is listed twice (zones {} and {}, counting from 1)",
                    entry.zone,
                    first + 1,
                    later + 1
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_by_id_and_name() {
        let file = ConfigFile::parse(
            "zones:\n  - id: 0123456789abcdef0123456789abcdef\n    expect: off\n  \
             - name: Example.com\n  - name: b.example.com\n    expect: any\n",
        )
        .unwrap();
        assert_eq!(
            file.zones,
            [
                ZoneEntry {
                    zone: ZoneRef::Id("0123456789abcdef0123456789abcdef".parse().unwrap()),
                    expect: Some(Expectation::Off),
                },
                ZoneEntry {
                    zone: ZoneRef::Name("example.com".to_owned()),
                    expect: None,
                },
                ZoneEntry {
                    zone: ZoneRef::Name("b.example.com".to_owned()),
                    expect: Some(Expectation::Any),
                },
            ]
        );
        let quoted = ConfigFile::parse("zones:\n  - name: a.example.com\n    expect: \"on\"\n");
        assert_eq!(quoted.unwrap().zones[0].expect, Some(Expectation::On));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let cases = [
            (
                "zones:\n  - id: 0123456789abcdef0123456789abcdef\n    colour: red\n",
                "line 3",
                "colour",
            ),
            (
                "zones:\n  - name: example.com\n  - id: nope\n",
                "line 3",
                "nope",
            ),
            ("zones:\n  - {}\n", "line 2", "needs `id` or `name`"),
            (
                "zones:\n  - name: 0123456789abcdef0123456789abcdef\n",
                "line 2",
                "`id:`",
            ),
            ("zone:\n  - name: example.com\n", "line 1", "zone"),
            // Regression: reported at the line where the entry starts.
            (
                "zones:\n  - name: example.com\n    expect: maybe\n",
                "line 3",
                "maybe",
            ),
            (
                "zones:\n  - name: example.com\n  - name: Example.com\n    expect: off\n",
                "listed twice",
                "zones 1 and 2",
            ),
            ("zones: [\n", "line 2", "did not find expected node"),
        ];
        for (text, line, reason) in cases {
            let err = ConfigFile::parse(text).unwrap_err();
            assert!(
                err.contains(line) && err.contains(reason),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn an_empty_file_lists_no_zones() {
        assert!(ConfigFile::parse("").unwrap().zones.is_empty());
        assert!(ConfigFile::parse("zones: []\n").unwrap().zones.is_empty());
    }
}
