//! Reading the small JSON objects of settings (`ROUTE_PRICES`, `ENDPOINTS`, `PLANS`) strictly, by
//! hand: what `#[serde(deny_unknown_fields)]` on a struct of optional fields would refuse,
//! this refuses, in much the same words, without serde_json's whole `Value` deserializer in
//! the bundle for two settings read once per isolate.

use serde_json::{Map, Value};

/// A small JSON object of a setting, read strictly.
pub struct Fields<'v>(&'v Map<String, Value>);

impl<'v> Fields<'v> {
    /// The object `v`, if it is one with no field outside `allowed`.
    pub fn of(v: &'v Value, allowed: &[&str]) -> Result<Fields<'v>, String> {
        let Value::Object(map) = v else { return Err(format!("invalid type: {}, expected a map", kind(v))) };
        match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => {
                let expected: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                Err(format!("unknown field `{k}`, expected one of {}", expected.join(", ")))
            }
            None => Ok(Fields(map)),
        }
    }

    /// A field that is absent or `null` is `None`.
    pub fn get(&self, name: &str) -> Option<&'v Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// An optional number.
    pub fn number(&self, name: &str) -> Result<Option<f64>, String> {
        self.get(name)
            .map(|v| v.as_f64().ok_or_else(|| format!("{name}: invalid type: {}, expected a number", kind(v))))
            .transpose()
    }

    /// An optional whole number no larger than `max`.
    pub fn integer(&self, name: &str, max: u64) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("{name}: invalid {}, expected an integer from 0 to {max}", kind(v)))
            })
            .transpose()
    }

    /// An optional boolean.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, String> {
        self.get(name)
            .map(|v| v.as_bool().ok_or_else(|| format!("{name}: invalid type: {}, expected a boolean", kind(v))))
            .transpose()
    }

    /// An optional string.
    pub fn text(&self, name: &str) -> Result<Option<&'v str>, String> {
        self.get(name)
            .map(|v| v.as_str().ok_or_else(|| format!("{name}: invalid type: {}, expected a string", kind(v))))
            .transpose()
    }
}

/// How serde names a JSON value's type in its errors.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "sequence",
        Value::Object(_) => "map",
    }
}
