//! Naming the field of a TOML type error. serde deserialises an internally tagged enum (`[data] kind = ...`,
//! `[objective] kind = ...`, `[[guidance.terms]]`) from a buffered copy of its table, so a wrong type inside one
//! (`rings = -1`, `classes = [[nan]]`) is reported at the table's header, without the key. The message still
//! holds the offending value (``floating point `NaN` ``, ``integer `-1` ``): the keys that hold it are named.

/// `message` (a `toml` error) with the fields holding its offending value appended, when the message does not
/// already point at them.
pub fn explain(text: &str, message: &str) -> String {
    bounded(&named(text, message))
}

/// The longest line of an error kept whole: a 50 MB bad value was echoed three times (150 MB of stderr).
const MAX_LINE: usize = 240;

fn bounded(message: &str) -> String {
    message
        .lines()
        .map(|l| match l.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => format!("{}… ({} characters)", &l[..cut], l.chars().count()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn named(text: &str, message: &str) -> String {
    let Some(offending) = offending_value(message) else { return message.to_string() };
    let Ok(root) = text.parse::<toml::Table>() else { return message.to_string() };
    let mut hits = Vec::new();
    for (k, v) in &root {
        find(v, k.clone(), &offending, &mut hits);
    }
    // The table the parser points at (`2 | [data]`): its fields first.
    let table = message.lines().find_map(|l| {
        let header = l.split_once("| [")?.1.trim_end();
        Some(header.trim_start_matches('[').trim_end_matches(']').to_string())
    });
    if let Some(t) = table.filter(|t| hits.iter().any(|h| h.starts_with(&format!("{t}.")))) {
        hits.retain(|h| h.starts_with(&format!("{t}.")));
    }
    let named: Vec<&String> = hits.iter().filter(|p| !points_at(message, leaf_key(p))).collect();
    if named.is_empty() || named.len() > 12 {
        return message.to_string();
    }
    let list: Vec<&str> = named.iter().map(|s| s.as_str()).collect();
    let which = if list.len() == 1 { "the field" } else { "one of the fields" };
    format!("{message}\nthe value is that of {which} {}", list.join(", "))
}

#[derive(Debug)]
enum Offending {
    Float(f64),
    Integer(i64),
    /// An unknown name inside a tagged table (`beta_schedule = "cosine"`): serde reports the variant only.
    Variant(String),
}

fn offending_value(message: &str) -> Option<Offending> {
    let literal = |prefix: &str| -> Option<String> {
        let rest = &message[message.find(prefix)? + prefix.len()..];
        let rest = rest.strip_prefix('`')?;
        Some(rest[..rest.find('`')?].to_string())
    };
    if let Some(l) = literal("floating point ") {
        let v = match l.as_str() {
            "NaN" | "nan" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            other => other.parse().ok()?,
        };
        return Some(Offending::Float(v));
    }
    if let Some(v) = literal("unknown variant ") {
        return Some(Offending::Variant(v));
    }
    literal("integer ").and_then(|l| l.parse().ok()).map(Offending::Integer)
}

fn find(v: &toml::Value, path: String, offending: &Offending, hits: &mut Vec<String>) {
    match (v, offending) {
        (toml::Value::Float(x), Offending::Float(o)) if x == o || (x.is_nan() && o.is_nan()) => hits.push(path),
        (toml::Value::Integer(x), Offending::Integer(o)) if x == o => hits.push(path),
        (toml::Value::String(x), Offending::Variant(o)) if x == o => hits.push(path),
        (toml::Value::Array(a), _) => {
            a.iter().enumerate().for_each(|(i, x)| find(x, format!("{path}[{i}]"), offending, hits));
        }
        (toml::Value::Table(t), _) => t.iter().for_each(|(k, x)| find(x, format!("{path}.{k}"), offending, hits)),
        _ => {}
    }
}

/// Whether a parser message already shows `key` being set: a source line it quotes (`12 | rings = -1`) assigns
/// it. A bare substring test would not do: a one-letter key such as `a` or `s` is in every message.
pub fn points_at(message: &str, key: &str) -> bool {
    message.lines().filter_map(|l| l.split_once(" | ").map(|(n, text)| (n.trim(), text))).any(|(n, text)| {
        n.bytes().all(|b| b.is_ascii_digit())
            && text.match_indices(key).any(|(i, _)| {
                let before = text[..i].chars().next_back();
                let after = text[i + key.len()..].trim_start();
                before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) && after.starts_with('=')
            })
    })
}

/// `data.classes[0][1]` -> `classes`.
fn leaf_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path).split('[').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_inside_a_tagged_table_names_its_field() {
        let text = "steps = 3\n[data]\nkind = \"rings\"\nrings = -1\n";
        let msg = "TOML parse error at line 2, column 1\n  |\n2 | [data]\n  | ^^^^^^\ninvalid value: integer `-1`, expected usize";
        assert!(explain(text, msg).ends_with("the value is that of the field data.rings"), "{}", explain(text, msg));
        let text = "[data]\nclasses = [[0], [nan]]\n";
        let msg = "invalid type: floating point `NaN`, expected usize";
        assert!(explain(text, msg).contains("data.classes[1][0]"));
        // A huge value is not echoed whole.
        let long = format!("invalid value: `{}`", "c".repeat(100_000));
        assert!(explain("", &long).len() < 400);
        // A message that already shows the key being set is left alone.
        let msg = "2 | rings = -1\ninvalid value: integer `-1`, expected usize";
        assert_eq!(explain("rings = -1\n", msg), msg);
        // A one-letter key is not "shown" by any message that happens to contain the letter.
        let text = "[reward]\nkind = \"exp-linear\"\na = [nan, 0.0]\n";
        let msg = "1 | [reward]\ninvalid type: floating point `NaN`, expected a finite value";
        assert!(explain(text, msg).contains("the field reward.a[0]"), "{}", explain(text, msg));
        assert!(points_at("3 | a = [nan]", "a") && !points_at("3 | alpha = 1", "a") && !points_at("a = 1", "a"));
    }
}
