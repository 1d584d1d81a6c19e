//! Schemas of the OpenAPI description that the derive macros cannot state,
//! and the one place where the host meets JSON Schema's idea of an integer.

use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use taskflow_model::task::{MAX_ATTEMPTS_LIMIT, Task};

use crate::backup::{BACKUP_FORMAT, BACKUP_VERSION};

/// A backup document: every task of a host, as `GET /admin/backup` returns
/// it, backup files hold it and `POST /admin/restore` takes it.
///
/// Its schema is what a restore accepts: the tasks obey the rules of a
/// submission (see [`Task::check_restorable`]), `attempts` is at most
/// `max_attempts`, and bodies are inline (a backup carries them: no
/// `payload_blob` or `result_blob`, and attempts without `logs_blob`), and
/// attempts are records (no live view's `logs_skipped`).
#[derive(Debug)]
pub struct BackupDocument;

impl PartialSchema for BackupDocument {
    fn schema() -> RefOr<Schema> {
        let integer = || ObjectBuilder::new().schema_type(Type::Integer);
        // JSON Schema cannot compare two fields, so `attempts <= max_attempts`
        // is one alternative per allowed `max_attempts`, each a whole task.
        let task = (1..=MAX_ATTEMPTS_LIMIT).fold(AnyOfBuilder::new(), |any, max| {
            let within = ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("max_attempts", integer().enum_values(Some([max])))
                .property("attempts", integer().maximum(Some(max)))
                .property("payload_blob", ObjectBuilder::new().schema_type(Type::Null))
                .property("result_blob", ObjectBuilder::new().schema_type(Type::Null))
                .property(
                    "history",
                    ArrayBuilder::new().items(
                        ObjectBuilder::new()
                            .property("logs_blob", ObjectBuilder::new().schema_type(Type::Null))
                            .property("logs_skipped", integer().enum_values(Some([0]))),
                    ),
                );
            any.item(
                AllOfBuilder::new()
                    .item(Ref::from_schema_name(Task::name()))
                    .item(within),
            )
        });
        ObjectBuilder::new()
            .description(Some("A backup document: every task of a host."))
            .property("format", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([BACKUP_FORMAT])))
            .required("format")
            .property("version", integer().enum_values(Some([BACKUP_VERSION])))
            .required("version")
            .property(
                "created_at",
                ObjectBuilder::new()
                    .schema_type(SchemaType::AnyValue)
                    .description(Some("When the backup was taken (RFC 3339); for people: a restore does not read it.")),
            )
            .property("tasks", ArrayBuilder::new().items(task))
            .required("tasks")
            .into()
    }
}

impl ToSchema for BackupDocument {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Task::name().into(), Task::schema()));
        <Task as ToSchema>::schemas(schemas);
    }
}

/// Fields of a backup document's tasks that hold integers.
const TASK_INTEGER_FIELDS: [&str; 5] = [
    "priority",
    "attempts",
    "max_attempts",
    "timeout_ms",
    "sequence",
];

/// Fields of the attempts in a task's `history` that hold integers.
const ATTEMPT_INTEGER_FIELDS: [&str; 3] = ["number", "logs_dropped", "logs_skipped"];

/// Rewrites whole numbers written as floats (`16.0`, `1.6e1`) in the integer
/// fields of a backup document (`version`, each task's
/// [`TASK_INTEGER_FIELDS`] and its attempts' [`ATTEMPT_INTEGER_FIELDS`]) as
/// integers (`16`).
///
/// JSON Schema (from draft 6, so in OpenAPI 3.1) counts `16.0` as an
/// integer, but serde does not take it for a `u32`; after this, a document
/// that the schema allows is one that deserialises. The numbers are read
/// from their text, exactly (a float would round long ones). Payloads and
/// results are copied untouched: they are the plugins' data. Returns `None`
/// when nothing needs rewriting or the bytes are not a JSON object (the
/// parser that follows reports what is wrong).
///
/// Why a scanner and not serde: a `deserialize_with` on these fields sees a
/// float already rounded (`18446744073709551615.0` is no longer exact), and
/// serde_json's `arbitrary_precision`, which would show the text, changes
/// how every JSON number in the process is parsed (feature unification),
/// the hot path of every submission included.
pub fn backup_with_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut scan = Scan {
        bytes,
        at: 0,
        out: Vec::new(),
        changed: false,
    };
    scan.object(|scan, key| match key.as_str() {
        "version" => scan.number_or_value(),
        "tasks" => scan.array(|scan| {
            scan.object(|scan, key| {
                if TASK_INTEGER_FIELDS.contains(&key.as_str()) {
                    scan.number_or_value()
                } else if key == "history" {
                    scan.array(|scan| {
                        scan.object(|scan, key| {
                            if ATTEMPT_INTEGER_FIELDS.contains(&key.as_str()) {
                                scan.number_or_value()
                            } else {
                                scan.value()
                            }
                        })
                    })
                } else {
                    scan.value()
                }
            })
        }),
        _ => scan.value(),
    })?;
    scan.whitespace();
    (scan.at == bytes.len() && scan.changed).then_some(scan.out)
}

/// A copying scan over a JSON text: enough of a parser to find the integer
/// fields; everything else is copied as it is and left for serde to judge.
struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
    out: Vec<u8>,
    changed: bool,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn copy(&mut self, n: usize) -> Option<()> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())?;
        self.out.extend_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Some(())
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.out.push(self.bytes[self.at]);
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.peek() == Some(byte)).then_some(())?;
        self.copy(1)
    }

    /// A string, copied; returns its raw bytes, quotes included.
    fn string(&mut self) -> Option<&[u8]> {
        self.whitespace();
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => self.copy(2)?,
                _ => self.copy(1)?,
            }
        }
        self.copy(1)?;
        Some(&self.bytes[start..self.at])
    }

    /// `{ "key": value, … }`, each value handled by `field` given the key.
    fn object(&mut self, mut field: impl FnMut(&mut Self, String) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.whitespace();
        if self.peek() == Some(b'}') {
            return self.copy(1);
        }
        loop {
            let key: String = serde_json::from_slice(self.string()?).ok()?;
            self.expect(b':')?;
            field(self, key)?;
            self.whitespace();
            match self.peek()? {
                b',' => self.copy(1)?,
                b'}' => return self.copy(1),
                _ => return None,
            }
        }
    }

    /// `[ item, … ]`, each item handled by `item`.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.whitespace();
        if self.peek() == Some(b']') {
            return self.copy(1);
        }
        loop {
            item(self)?;
            self.whitespace();
            match self.peek()? {
                b',' => self.copy(1)?,
                b']' => return self.copy(1),
                _ => return None,
            }
        }
    }

    /// Any value, copied as it is (nesting is followed without recursion).
    fn value(&mut self) -> Option<()> {
        self.whitespace();
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.copy(1)?;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.copy(1)?;
                }
                b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' if depth > 0 => self.copy(1)?,
                _ => {
                    let start = self.at;
                    while self.peek().is_some_and(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')
                    }) {
                        self.copy(1)?;
                    }
                    (self.at > start).then_some(())?;
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }

    /// A number, written as an integer when it is a whole one in `u64`;
    /// any other value is copied.
    fn number_or_value(&mut self) -> Option<()> {
        self.whitespace();
        let start = self.at;
        let length = self.bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        let token = std::str::from_utf8(&self.bytes[start..start + length]).ok()?;
        match whole_number(token) {
            Some(integer) if integer != token => {
                self.out.extend_from_slice(integer.as_bytes());
                self.at += length;
                self.changed = true;
                Some(())
            }
            _ => self.value(),
        }
    }
}

/// The decimal integer a JSON number token stands for, when it is a whole
/// number from 0 to `u64::MAX` (`-0.0` included); `None` otherwise.
fn whole_number(token: &str) -> Option<String> {
    // JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    let digits_only =
        |digits: &str| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let (negative, unsigned) = token
        .strip_prefix('-')
        .map_or((false, token), |rest| (true, rest));
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => {
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            let value: i64 = digits_only(digits).then(|| digits.parse().ok()).flatten()?;
            (
                mantissa,
                if exponent.starts_with('-') {
                    -value
                } else {
                    value
                },
            )
        }
        None => (unsigned, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, digits_only(fraction).then_some(fraction)?),
        None => (mantissa, ""),
    };
    if !digits_only(whole) || (whole.len() > 1 && whole.starts_with('0')) {
        return None;
    }
    // The value is `digits · 10^exponent`.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let exponent = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    if digits.is_empty() {
        return Some("0".to_owned());
    }
    if negative {
        return None;
    }
    let significant = digits.trim_end_matches('0');
    let exponent = exponent.checked_add(i64::try_from(digits.len() - significant.len()).ok()?)?;
    // At most 20 digits: past that no `u64` holds it.
    let zeros = usize::try_from(exponent)
        .ok()
        .filter(|zeros| significant.len() + zeros <= 20)?;
    let integer = format!("{significant}{}", "0".repeat(zeros));
    integer.parse::<u64>().ok().map(|n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_read_exactly_from_their_text() {
        for (token, whole) in [
            ("16", Some("16")),
            ("16.0", Some("16")),
            ("16.000", Some("16")),
            ("1.6e1", Some("16")),
            ("160e-1", Some("16")),
            ("1E+2", Some("100")),
            ("0.0", Some("0")),
            ("-0.0", Some("0")),
            ("-0", Some("0")),
            ("0e5", Some("0")),
            // Too long for an f64 to hold exactly; still exact here.
            ("2057058274101121.0", Some("2057058274101121")),
            ("18446744073709551615.0", Some("18446744073709551615")),
            ("18446744073709551616.0", None),
            ("1e20", None),
            ("1.5", None),
            ("15e-1", None),
            ("-1.0", None),
            ("1e999999999999999999999", None),
            ("1.", None),
            (".5", None),
            ("", None),
            ("1.0.0", None),
            ("016", None),
            ("016.0", None),
            ("1e++2", None),
            ("1e", None),
            ("+1", None),
        ] {
            assert_eq!(whole_number(token).as_deref(), whole, "{token:?}");
        }
    }

    #[test]
    fn whole_floats_in_integer_fields_become_integers_and_nothing_else_changes() {
        let document = br#"{"format": "taskflow-backup", "version": 1.0, "created_at": 2.0,
            "tasks": [{"priority": 2.0, "attempts": 0e0, "max_attempts": 3, "timeout_ms": 1.5, "sequence": 2057058274101121.0,
                       "payload": {"n": 4.0, "priority": 5.0, "s": "x\"y", "a": [1.0, {"b": [2.0]}]},
                       "result": {"encoding": "json", "value": 5.0}, "last_error": null}, {}]}"#;
        let rewritten = backup_with_integers(document).expect("changed");
        assert_eq!(
            String::from_utf8(rewritten).expect("UTF-8"),
            r#"{"format": "taskflow-backup", "version": 1, "created_at": 2.0,
            "tasks": [{"priority": 2, "attempts": 0, "max_attempts": 3, "timeout_ms": 1.5, "sequence": 2057058274101121,
                       "payload": {"n": 4.0, "priority": 5.0, "s": "x\"y", "a": [1.0, {"b": [2.0]}]},
                       "result": {"encoding": "json", "value": 5.0}, "last_error": null}, {}]}"#
        );
        // An escaped key is the same key.
        assert_eq!(
            backup_with_integers(br#"{"vers\u0069on": 1.0}"#).as_deref(),
            Some(&br#"{"vers\u0069on": 1}"#[..])
        );
        // Nothing to do, or not a document: no copy.
        assert_eq!(
            backup_with_integers(br#"{"version": 1, "tasks": [{"priority": 2}]}"#),
            None
        );
        assert_eq!(backup_with_integers(b"[1.0]"), None);
        assert_eq!(backup_with_integers(b"not json"), None);
        assert_eq!(backup_with_integers(br#"{"version": 1.0"#), None);
        assert_eq!(backup_with_integers(br#"{"version": 1.0} trailing"#), None);
        // Past u64::MAX stays as written (and is then refused as a sequence).
        assert_eq!(
            backup_with_integers(br#"{"version": 1, "tasks": [{"sequence": 1e20}]}"#),
            None
        );
    }
}
