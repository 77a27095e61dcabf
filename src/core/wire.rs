//! The JSON of the messages between the worker and its Durable Objects, of the rows those
//! objects store and of the records KV holds, read and written by hand.
//!
//! serde's derives gave every one of some fifty types its own copy of serde_json's parser and
//! writer, specialised to its fields: most of the bundle's serde code, and a fifth of its
//! bytes. Here a text is parsed once, by the one `serde_json::Value` parser the gateway
//! has anyway, and a type reads its fields from that tree (`Fields`) and writes itself with a
//! few helpers that take `&dyn ToJson`, so nothing is copied per type but the list of its
//! fields.
//!
//! The shape is serde's, field for field (names, externally tagged enums, a newtype as its
//! value, a map with its keys as strings, a missing `Option` read as `None`, fields serde
//! skipped when empty still skipped), so rows and records stored by earlier builds read back,
//! and an object of this build reads what its callers send. Unknown fields are ignored, as
//! serde's derives did.

use crate::core::sorted::SortedMap;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::Cell;
use std::collections::BTreeMap;

/// Why a text did not decode: what was expected, and where (`field.field: ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bad(pub String);

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What went wrong in one read: the first mismatch, with the path to it.
///
/// A reader does not stop at a mismatch: it records it here and goes on with a stand-in
/// (`FromJson::fallback`), and the read as a whole fails. That keeps a struct's reader one
/// call per field, with no early return and none of the drops an early return needs for the
/// fields already read; those, repeated over every field of every type, were most of a
/// `Result`-returning reader's code.
#[derive(Default)]
pub struct Errors(Cell<Option<String>>);

impl Errors {
    /// Records why a value does not fit, unless something already failed.
    #[cold]
    #[inline(never)]
    pub fn fail(&self, why: String) {
        let first = self.0.take().unwrap_or(why);
        self.0.set(Some(first));
    }

    pub fn failed(&self) -> bool {
        let e = self.0.take();
        let failed = e.is_some();
        self.0.set(e);
        failed
    }

    /// After reading field `name`: a mismatch found in it, and not before (`failed_before`),
    /// is placed under that name.
    #[inline(never)]
    fn under(&self, name: &str, failed_before: bool) {
        if failed_before {
            return;
        }
        if let Some(why) = self.0.take() {
            let dot = if why.starts_with(':') { "" } else { "." };
            self.0.set(Some(format!("{name}{dot}{why}")));
        }
    }

    /// Records that `v` is not `what`.
    #[cold]
    #[inline(never)]
    pub fn expected(&self, what: &str, v: &Value) {
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        // the kind found, never its content: it may be a row
        self.fail(format!(": expected {what}, found {kind}"))
    }

    /// Records a variant this build does not know.
    #[cold]
    #[inline(never)]
    pub fn unknown(&self, tag: &str) {
        self.fail(format!(": unknown variant `{tag}`"))
    }
}

/// A type read from a JSON tree.
pub trait FromJson: Sized {
    /// Reads `v`; what does not fit is recorded in `e` and read as `fallback()`.
    fn read(v: &Value, e: &Errors) -> Self;

    /// The stand-in for a value that did not fit. Never seen: the read fails.
    fn fallback() -> Self;

    /// Whether a field that is not there reads as `fallback()` (`None`, for an `Option`, as
    /// serde read it) rather than failing.
    const OPTIONAL: bool = false;
}

/// A type written as JSON text.
pub trait ToJson {
    fn to_json(&self, out: &mut String);

    /// Whether a field holding this value is left out of its object (`Skip`).
    fn skipped(&self) -> bool {
        false
    }
}

/// Parses `text` and reads a `T` from it.
pub fn parse<T: FromJson>(text: &str) -> Result<T, Bad> {
    from_tree(&tree(text)?)
}

/// Reads a `T` from a JSON tree.
pub fn from_tree<T: FromJson>(v: &Value) -> Result<T, Bad> {
    let e = Errors::default();
    let t = T::read(v, &e);
    match e.0.take() {
        Some(why) => Err(Bad(why)),
        None => Ok(t),
    }
}

/// The JSON tree of `text`, with its repeated keys marked (`Tree`).
pub fn tree(text: &str) -> Result<Value, Bad> {
    let mut de = serde_json::Deserializer::from_slice(text.as_bytes());
    let v = Tree.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    v.map_err(|e| Bad(e.to_string()))
}

/// Marks a key an object repeats: serde's derives refused a struct that repeats a field, a
/// map kept the last value. serde_json's own tree keeps the last value and forgets the
/// repeat, so this tree keeps the last value and, beside it, this prefix and the key with a
/// `null`: `Fields` refuses an object that has one, a map's reader passes over it.
const REPEATED: &str = "\u{1}repeated:";

/// Builds a JSON tree as serde_json's `Value` does, marking repeated keys (`REPEATED`).
struct Tree;

impl<'de> DeserializeSeed<'de> for Tree {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Tree)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Tree)?;
            if out.contains_key(&k) {
                out.insert(format!("{REPEATED}{k}"), Value::Null);
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// `v` as JSON text.
pub fn text(v: &dyn ToJson) -> String {
    let mut out = String::new();
    v.to_json(&mut out);
    out
}

/// `v` as a JSON tree, to go in a document built with `json!`.
pub fn value(v: &dyn ToJson) -> Value {
    tree(&text(v)).unwrap_or(Value::Null)
}

/// The fields of a JSON object, read by name.
pub struct Fields<'a> {
    map: Option<&'a Map<String, Value>>,
    e: &'a Errors,
}

impl<'a> Fields<'a> {
    /// The fields of `v`, or none (recorded) when it is not an object or repeats a field.
    pub fn of(v: &'a Value, e: &'a Errors) -> Fields<'a> {
        Fields::strict(v, e, None)
    }

    /// The fields of `v` as `#[serde(deny_unknown_fields)]` read them: none outside `allowed`.
    pub fn only(v: &'a Value, e: &'a Errors, allowed: &[&str]) -> Fields<'a> {
        Fields::strict(v, e, Some(allowed))
    }

    fn strict(v: &'a Value, e: &'a Errors, allowed: Option<&[&str]>) -> Fields<'a> {
        let Some(map) = v.as_object() else {
            e.expected("an object", v);
            return Fields { map: None, e };
        };
        // repeats sort at the front: their prefix is below every printable character
        if let Some(k) = map.keys().take_while(|k| k.as_str() < "\u{2}").find_map(|k| k.strip_prefix(REPEATED)) {
            e.fail(format!(": duplicate field `{k}`"));
        }
        if let Some(allowed) = allowed {
            if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
                let expected: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                e.fail(format!(": unknown field `{k}`, expected one of {}", expected.join(", ")));
            }
        }
        Fields { map: Some(map), e }
    }

    /// A field's value, as it is.
    #[inline(never)]
    pub fn value(&self, name: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(name))
    }

    /// A field as serde read it without a default: required, unless it is an `Option`.
    // not inlined, here and below: one copy per field type, not one per field
    #[inline(never)]
    pub fn get<T: FromJson>(&self, name: &str) -> T {
        match self.lookup(name, T::OPTIONAL) {
            Some(v) => self.read(name, v),
            None => T::fallback(),
        }
    }

    /// A field's value; a field that must be there and is not is recorded.
    #[inline(never)]
    fn lookup(&self, name: &str, optional: bool) -> Option<&'a Value> {
        let v = self.value(name);
        if v.is_none() && !optional && self.map.is_some() {
            self.e.fail(format!("{name}: missing"));
        }
        v
    }

    /// A field serde read with `#[serde(default)]`: its type's default when missing.
    #[inline(never)]
    pub fn or_default<T: FromJson + Default>(&self, name: &str) -> T {
        match self.value(name) {
            Some(v) => self.read(name, v),
            None => T::default(),
        }
    }

    /// A field whose `null` means something (an admin edit's "clear"): `None` when missing,
    /// `Some(None)` when `null`.
    pub fn patch<T: FromJson>(&self, name: &str) -> Option<Option<T>> {
        self.value(name).map(|v| (!v.is_null()).then(|| self.read(name, v)))
    }

    /// A field with a default of its own when missing.
    pub fn or<T: FromJson>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            Some(v) => self.read(name, v),
            None => default,
        }
    }

    fn read<T: FromJson>(&self, name: &str, v: &Value) -> T {
        let before = self.e.failed();
        let t = T::read(v, self.e);
        self.e.under(name, before);
        t
    }
}

/// An externally tagged enum's variant, as serde writes it: its name as a string when it has
/// no fields (the value is then `null`), else an object of one field, its name. Neither:
/// recorded, and no name.
pub fn variant<'a>(v: &'a Value, e: &Errors) -> (&'a str, &'a Value) {
    match v {
        Value::String(tag) => (tag, &Value::Null),
        Value::Object(o) if o.len() == 1 => o.iter().next().map_or(("", &Value::Null), |(k, v)| (k.as_str(), v)),
        _ => {
            e.expected("a variant", v);
            ("", &Value::Null)
        }
    }
}

/// Writes a JSON object of `fields`, in order, leaving out the skipped ones.
pub fn object(out: &mut String, fields: &[(&str, &dyn ToJson)]) {
    out.push('{');
    let mut first = true;
    for &(name, v) in fields {
        if v.skipped() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        string(out, name);
        out.push(':');
        v.to_json(out);
    }
    out.push('}');
}

/// Writes an externally tagged variant with a value: `{"tag": value}`.
pub fn tagged(out: &mut String, tag: &str, v: &dyn ToJson) {
    out.push('{');
    string(out, tag);
    out.push(':');
    v.to_json(out);
    out.push('}');
}

/// Writes an externally tagged variant with fields: `{"tag": {fields}}`.
pub fn tagged_object(out: &mut String, tag: &str, fields: &[(&str, &dyn ToJson)]) {
    out.push('{');
    string(out, tag);
    out.push(':');
    object(out, fields);
    out.push('}');
}

/// Writes a JSON array of `items`.
pub fn array(out: &mut String, items: &[&dyn ToJson]) {
    out.push('[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        v.to_json(out);
    }
    out.push(']');
}

/// A field left out of its object when `.0` says so (serde's `skip_serializing_if`).
pub struct Skip<'a>(pub bool, pub &'a dyn ToJson);

impl ToJson for Skip<'_> {
    fn to_json(&self, out: &mut String) {
        self.1.to_json(out)
    }
    fn skipped(&self) -> bool {
        self.0
    }
}

/// Writes `s` as a JSON string, escaped as serde_json escapes it.
pub fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let needs_escape = |b: &u8| *b < 0x20 || *b == b'"' || *b == b'\\';
    // most strings (ids, model names, routes) have nothing to escape: one tight scan
    let Some(first) = bytes.iter().position(needs_escape) else {
        out.push_str(s);
        out.push('"');
        return;
    };
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate().skip(first) {
        let escape = match *b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        start = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Writes `n` in decimal.
pub fn uint(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

#[inline(never)]
fn unsigned(v: &Value, max: u64, e: &Errors) -> u64 {
    match v.as_u64() {
        Some(n) if n <= max => n,
        _ => {
            e.expected("an unsigned integer in range", v);
            0
        }
    }
}

impl FromJson for u64 {
    fn read(v: &Value, e: &Errors) -> Self {
        unsigned(v, u64::MAX, e)
    }
    fn fallback() -> Self {
        0
    }
}

impl FromJson for u32 {
    fn read(v: &Value, e: &Errors) -> Self {
        unsigned(v, u32::MAX.into(), e) as u32
    }
    fn fallback() -> Self {
        0
    }
}

impl FromJson for u16 {
    fn read(v: &Value, e: &Errors) -> Self {
        unsigned(v, u16::MAX.into(), e) as u16
    }
    fn fallback() -> Self {
        0
    }
}

impl FromJson for bool {
    fn read(v: &Value, e: &Errors) -> Self {
        v.as_bool().unwrap_or_else(|| {
            e.expected("a boolean", v);
            false
        })
    }
    fn fallback() -> Self {
        false
    }
}

impl FromJson for String {
    fn read(v: &Value, e: &Errors) -> Self {
        match v.as_str() {
            Some(s) => s.to_string(),
            None => {
                e.expected("a string", v);
                String::new()
            }
        }
    }
    fn fallback() -> Self {
        String::new()
    }
}

impl<T: FromJson> FromJson for Option<T> {
    fn read(v: &Value, e: &Errors) -> Self {
        (!v.is_null()).then(|| T::read(v, e))
    }
    fn fallback() -> Self {
        None
    }
    const OPTIONAL: bool = true;
}

impl<T: FromJson> FromJson for Box<T> {
    fn read(v: &Value, e: &Errors) -> Self {
        Box::new(T::read(v, e))
    }
    fn fallback() -> Self {
        Box::new(T::fallback())
    }
}

/// The items of a JSON array (none, recorded, when it is not one, or has not `len` items).
fn items<'a>(v: &'a Value, len: Option<usize>, e: &Errors) -> &'a [Value] {
    match v.as_array() {
        Some(a) if len.is_none_or(|n| n == a.len()) => a,
        _ => {
            e.expected("an array of the right length", v);
            &[]
        }
    }
}

fn nth<T: FromJson>(a: &[Value], i: usize, e: &Errors) -> T {
    a.get(i).map_or_else(T::fallback, |v| T::read(v, e))
}

impl<T: FromJson> FromJson for Vec<T> {
    fn read(v: &Value, e: &Errors) -> Self {
        items(v, None, e).iter().map(|v| T::read(v, e)).collect()
    }
    fn fallback() -> Self {
        Vec::new()
    }
}

impl<A: FromJson, B: FromJson> FromJson for (A, B) {
    fn read(v: &Value, e: &Errors) -> Self {
        let a = items(v, Some(2), e);
        (nth(a, 0, e), nth(a, 1, e))
    }
    fn fallback() -> Self {
        (A::fallback(), B::fallback())
    }
}

impl<A: FromJson, B: FromJson, C: FromJson> FromJson for (A, B, C) {
    fn read(v: &Value, e: &Errors) -> Self {
        let a = items(v, Some(3), e);
        (nth(a, 0, e), nth(a, 1, e), nth(a, 2, e))
    }
    fn fallback() -> Self {
        (A::fallback(), B::fallback(), C::fallback())
    }
}

/// A map key, which JSON writes as a string (serde writes numbers in decimal).
pub trait Key: Ord + Sized {
    fn from_key(k: &str) -> Option<Self>;
    fn to_key(&self, out: &mut String);
}

impl Key for String {
    fn from_key(k: &str) -> Option<Self> {
        Some(k.to_string())
    }
    fn to_key(&self, out: &mut String) {
        string(out, self)
    }
}

impl Key for u64 {
    fn from_key(k: &str) -> Option<Self> {
        k.parse().ok()
    }
    fn to_key(&self, out: &mut String) {
        out.push('"');
        uint(out, *self);
        out.push('"');
    }
}

impl Key for u32 {
    fn from_key(k: &str) -> Option<Self> {
        k.parse().ok()
    }
    fn to_key(&self, out: &mut String) {
        u64::from(*self).to_key(out)
    }
}

/// The entries of a JSON object read as a map's.
fn entries<K: Key, V: FromJson>(v: &Value, e: &Errors) -> Vec<(K, V)> {
    let mut out = Vec::new();
    each_entry(v, e, &mut |k, v| match K::from_key(k) {
        Some(key) => out.push((key, V::read(v, e))),
        None => e.fail(": not a key of this map".into()),
    });
    out
}

/// What `entries` does apart from the key and value types, once.
fn each_entry(v: &Value, e: &Errors, read: &mut dyn FnMut(&str, &Value)) {
    let Some(o) = v.as_object() else {
        e.expected("an object", v);
        return;
    };
    for (k, v) in o {
        if k.starts_with(REPEATED) {
            // a repeated key: its last value is the map's, as serde read it
            continue;
        }
        let before = e.failed();
        read(k, v);
        e.under(k, before);
    }
}

impl<K: Key, V: FromJson> FromJson for BTreeMap<K, V> {
    fn read(v: &Value, e: &Errors) -> Self {
        let mut map = BTreeMap::new();
        for (k, v) in entries(v, e) {
            map.insert(k, v);
        }
        map
    }
    fn fallback() -> Self {
        BTreeMap::new()
    }
}

impl<K: Key, V: FromJson> FromJson for SortedMap<K, V> {
    fn read(v: &Value, e: &Errors) -> Self {
        entries(v, e).into_iter().collect()
    }
    fn fallback() -> Self {
        SortedMap::new()
    }
}

/// A map's entries written as a JSON object.
fn write_entries<'a, K: Key + 'a, V: ToJson + 'a>(out: &mut String, items: impl Iterator<Item = (&'a K, &'a V)>) {
    out.push('{');
    for (i, (k, v)) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        k.to_key(out);
        out.push(':');
        v.to_json(out);
    }
    out.push('}');
}

impl<K: Key, V: ToJson> ToJson for SortedMap<K, V> {
    fn to_json(&self, out: &mut String) {
        write_entries(out, self.iter())
    }
}

impl<K: Key, V: ToJson> ToJson for BTreeMap<K, V> {
    fn to_json(&self, out: &mut String) {
        write_entries(out, self.iter())
    }
}

impl ToJson for u64 {
    fn to_json(&self, out: &mut String) {
        uint(out, *self)
    }
}

impl ToJson for u32 {
    fn to_json(&self, out: &mut String) {
        uint(out, (*self).into())
    }
}

impl ToJson for u16 {
    fn to_json(&self, out: &mut String) {
        uint(out, (*self).into())
    }
}

impl ToJson for bool {
    fn to_json(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" })
    }
}

impl ToJson for str {
    fn to_json(&self, out: &mut String) {
        string(out, self)
    }
}

impl ToJson for String {
    fn to_json(&self, out: &mut String) {
        string(out, self)
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self, out: &mut String) {
        match self {
            Some(v) => v.to_json(out),
            None => out.push_str("null"),
        }
    }
}

impl<T: ToJson + ?Sized> ToJson for Box<T> {
    fn to_json(&self, out: &mut String) {
        (**self).to_json(out)
    }
}

impl<T: ToJson + ?Sized> ToJson for &T {
    fn to_json(&self, out: &mut String) {
        (**self).to_json(out)
    }
    fn skipped(&self) -> bool {
        (**self).skipped()
    }
}

impl<T: ToJson> ToJson for [T] {
    fn to_json(&self, out: &mut String) {
        out.push('[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            v.to_json(out);
        }
        out.push(']');
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self, out: &mut String) {
        self.as_slice().to_json(out)
    }
}

impl<A: ToJson, B: ToJson> ToJson for (A, B) {
    fn to_json(&self, out: &mut String) {
        array(out, &[&self.0, &self.1])
    }
}

impl<A: ToJson, B: ToJson, C: ToJson> ToJson for (A, B, C) {
    fn to_json(&self, out: &mut String) {
        array(out, &[&self.0, &self.1, &self.2])
    }
}

/// Reads and writes a tuple struct of one value (`MicroUsd`, `UnixMillis`, ...) as the value
/// alone, as serde does.
macro_rules! json_newtype {
    ($t:ty) => {
        impl $crate::core::wire::FromJson for $t {
            fn read(v: &serde_json::Value, e: &$crate::core::wire::Errors) -> Self {
                Self($crate::core::wire::FromJson::read(v, e))
            }
            fn fallback() -> Self {
                Self($crate::core::wire::FromJson::fallback())
            }
        }
        impl $crate::core::wire::ToJson for $t {
            fn to_json(&self, out: &mut String) {
                $crate::core::wire::ToJson::to_json(&self.0, out)
            }
        }
    };
}
pub(crate) use json_newtype;

/// Reads and writes a struct as serde's derive did: an object of its fields, in order. A
/// field is plain, or has serde's attribute as a word: `default` (`#[serde(default)]`),
/// `skip_none`, `skip_empty` and `skip_false` (`default` too, and left out when `None`,
/// empty or `false`, as `skip_serializing_if` left it out). `read` before the type: only
/// read (a document earlier builds wrote).
macro_rules! json_struct {
    (read $t:ident { $($f:ident $(: $how:ident)?),* $(,)? }) => {
        impl $crate::core::wire::FromJson for $t {
            fn read(v: &serde_json::Value, e: &$crate::core::wire::Errors) -> Self {
                let o = $crate::core::wire::Fields::of(v, e);
                $t { $($f: $crate::core::wire::json_struct!(@read o, $f $(, $how)?),)* }
            }
            fn fallback() -> Self {
                $t { $($f: $crate::core::wire::FromJson::fallback(),)* }
            }
        }
    };
    ($t:ident { $($f:ident $(: $how:ident)?),* $(,)? }) => {
        $crate::core::wire::json_struct!(read $t { $($f $(: $how)?),* });
        impl $crate::core::wire::ToJson for $t {
            fn to_json(&self, out: &mut String) {
                $crate::core::wire::object(
                    out,
                    &[$((stringify!($f), $crate::core::wire::json_struct!(@write self, $f $(, $how)?)),)*],
                );
            }
        }
    };
    (@read $o:ident, $f:ident) => { $o.get(stringify!($f)) };
    (@read $o:ident, $f:ident, $how:ident) => { $o.or_default(stringify!($f)) };
    (@write $s:ident, $f:ident) => { &$s.$f };
    (@write $s:ident, $f:ident, default) => { &$s.$f };
    (@write $s:ident, $f:ident, skip_none) => { &$crate::core::wire::Skip($s.$f.is_none(), &$s.$f) };
    (@write $s:ident, $f:ident, skip_empty) => { &$crate::core::wire::Skip($s.$f.is_empty(), &$s.$f) };
    (@write $s:ident, $f:ident, skip_false) => { &$crate::core::wire::Skip(!$s.$f, &$s.$f) };
}
pub(crate) use json_struct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in ["", "plain", "q\"uo\\te", "\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}", "é€😀", "a\u{0}b"] {
            let mut out = String::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
            assert_eq!(parse::<String>(&out).unwrap(), s);
        }
    }

    #[test]
    fn numbers_are_written_in_decimal_and_read_in_range() {
        for n in [0, 7, 10, 99, 100, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(text(&n), n.to_string());
            assert_eq!(parse::<u64>(&n.to_string()).unwrap(), n);
        }
        assert!(parse::<u32>("4294967296").is_err());
        assert!(parse::<u16>("65536").is_err());
        for refused in ["-1", "1.0", "1e3", "\"1\"", "null"] {
            assert!(parse::<u64>(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn options_maps_and_tuples_have_serdes_shape() {
        assert_eq!(text(&None::<u64>), "null");
        assert_eq!(parse::<Option<u64>>("null").unwrap(), None);
        let mut m = BTreeMap::new();
        m.insert(3u64, (String::from("a"), 1u32));
        m.insert(12u64, (String::from("b"), 2u32));
        assert_eq!(text(&m), r#"{"3":["a",1],"12":["b",2]}"#);
        assert_eq!(parse::<BTreeMap<u64, (String, u32)>>(&text(&m)).unwrap(), m);
        assert!(parse::<BTreeMap<u64, u64>>(r#"{"x":1}"#).is_err());
        assert!(parse::<(u64, u64)>("[1,2,3]").is_err());
    }

    #[test]
    fn a_missing_option_is_none_and_anything_else_missing_is_refused() {
        let v = tree(r#"{"a":1,"extra":true}"#).unwrap();
        let e = Errors::default();
        let f = Fields::of(&v, &e);
        assert_eq!(f.get::<u64>("a"), 1);
        assert_eq!(f.get::<Option<u64>>("b"), None);
        assert_eq!(f.or::<u32>("b", 1), 1);
        assert!(!e.failed());
        f.get::<u64>("b");
        assert_eq!(e.0.take().unwrap(), "b: missing");
        f.get::<bool>("a");
        assert_eq!(e.0.take().unwrap(), "a: expected a boolean, found a number");
    }

    #[test]
    fn the_first_mismatch_is_reported_with_its_path() {
        let read = parse::<BTreeMap<u64, (u64, String)>>(r#"{"1":[1,"x"],"2":[true,"y"],"3":[1,2]}"#);
        assert_eq!(read.unwrap_err().0, "2: expected an unsigned integer in range, found a boolean");
        assert_eq!(parse::<Vec<u64>>("{}").unwrap_err().0, ": expected an array of the right length, found an object");
    }

    #[test]
    fn skipped_fields_are_left_out() {
        let mut out = String::new();
        let none: Option<u64> = None;
        object(&mut out, &[("a", &Skip(none.is_none(), &none)), ("b", &1u64), ("c", &Skip(true, &2u64))]);
        assert_eq!(out, r#"{"b":1}"#);
    }
}
