//! Serializes a payload straight into PostgreSQL's binary `jsonb` format, the bytes the outbox
//! stores, so that no JSON text is produced and parsed again on the way (the largest cost of
//! writing an event otherwise).
//!
//! It is a serde `Serializer`: the payload structs stay the single description of the payload's
//! fields. The format is PostgreSQL's (`src/include/utils/jsonb.h`): a container is a header word
//! (count and kind), one `JEntry` word per child (its kind and length, or every 32nd its end
//! offset), then the children's data; numerics and containers start 4-byte aligned; object keys
//! are sorted by length, then bytes. Values that already are jsonb (`cf`) are copied in as stored.
//! `tests` below decodes the output again, and the integration tests compare what PostgreSQL
//! reads back.

use pgrx::{pg_sys, IntoDatum};
use serde::ser::{self, Serialize};
use std::fmt;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
const JB_OFFSET_STRIDE: usize = 32;
const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;

/// serde newtype names that carry bytes already in jsonb's format (see `Numeric` and `Container`).
pub const NUMERIC_TOKEN: &str = "$ae_events::jsonb::Numeric";
pub const CONTAINER_TOKEN: &str = "$ae_events::jsonb::Container";

/// A `numeric` as jsonb stores it: the varlena with a 4-byte header.
pub struct Numeric<'a>(pub &'a [u8]);

/// A stored jsonb value: the bytes after its varlena header (its root container).
pub struct Container<'a>(pub &'a [u8]);

impl Serialize for Numeric<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(NUMERIC_TOKEN, &BytesRef(self.0))
    }
}

impl Serialize for Container<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(CONTAINER_TOKEN, &BytesRef(self.0))
    }
}

/// Serializes as serde bytes (not as a sequence of numbers).
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[derive(Debug)]
pub struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl EncodeError {
    pub fn new(message: impl Into<String>) -> EncodeError {
        EncodeError(message.into())
    }
}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        EncodeError(message.to_string())
    }
}

fn unsupported(what: &str) -> EncodeError {
    EncodeError(format!("cannot encode {what} as jsonb"))
}

/// One encoded value: its kind (the JEntry type bits) and where its bytes are in the scratch
/// buffer (unaligned; alignment is applied where the value is placed in its container).
#[derive(Clone, Copy)]
pub struct Value {
    kind: u32,
    start: usize,
    end: usize,
}

/// An object key: a field name, or bytes copied into the scratch buffer (keys read from a stored
/// container, see `rewrite`).
#[derive(Clone, Copy)]
enum Key {
    Field(&'static str),
    Scratch(usize, usize),
}

impl Key {
    fn bytes<'s>(&self, scratch: &'s [u8]) -> &'s [u8] {
        match *self {
            Key::Field(name) => name.as_bytes(),
            Key::Scratch(start, end) => &scratch[start..end],
        }
    }
}

/// Encodes values into a reusable scratch buffer.
#[derive(Default)]
pub struct Encoder {
    scratch: Vec<u8>,
    /// The children of the containers being built, innermost last (keys for objects), kept in
    /// one reused stack rather than a vector per container.
    children: Vec<(Key, Value)>,
    /// Set while serializing the bytes of a `Numeric` or `Container`.
    raw_kind: Option<&'static str>,
}

impl Encoder {
    /// The root container of `value` (an object or array): the bytes of a jsonb datum after its
    /// 4-byte varlena header.
    pub fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<&[u8], EncodeError> {
        self.scratch.clear();
        self.children.clear();
        let root = value.serialize(&mut *self)?;
        if root.kind != JENTRY_ISCONTAINER {
            return Err(unsupported("a scalar at the root"));
        }
        Ok(&self.scratch[root.start..root.end])
    }

    fn push(&mut self, kind: u32, bytes: &[u8]) -> Value {
        let start = self.scratch.len();
        self.scratch.extend_from_slice(bytes);
        Value {
            kind,
            start,
            end: self.scratch.len(),
        }
    }

    fn empty(&self, kind: u32) -> Value {
        let at = self.scratch.len();
        Value {
            kind,
            start: at,
            end: at,
        }
    }

    /// Lay out the container whose children are `children[first..]` (an object's sorted by key)
    /// after the children's own bytes: header, JEntries, then (for an object) the keys and
    /// (always) the values, each numeric or container 4-byte aligned. Pops the children.
    fn container(&mut self, first: usize, is_object: bool) -> Result<Value, EncodeError> {
        let scratch = &mut self.scratch;
        let children = &mut self.children[first..];
        let count = children.len();
        let header = if is_object {
            let keys: &[u8] = scratch;
            children.sort_unstable_by(|a, b| key_order(a.0.bytes(keys), b.0.bytes(keys)));
            count as u32 & JB_CMASK | JB_FOBJECT
        } else {
            count as u32 & JB_CMASK | JB_FARRAY
        };
        // The container starts 4-aligned; its children are aligned relative to that start.
        pad(scratch, 0);
        let start = scratch.len();
        let entries = if is_object { 2 * count } else { count };
        scratch.extend_from_slice(&header.to_ne_bytes());
        let entries_at = scratch.len();
        scratch.resize(entries_at + 4 * entries, 0);
        let data_start = scratch.len();
        let mut index = 0;
        let mut set_entry = |scratch: &mut Vec<u8>, kind: u32, begin: usize| {
            let end = scratch.len();
            let entry = if index % JB_OFFSET_STRIDE == 0 {
                kind | ((end - data_start) as u32 & JENTRY_OFFLENMASK) | JENTRY_HAS_OFF
            } else {
                kind | ((end - begin) as u32 & JENTRY_OFFLENMASK)
            };
            let at = entries_at + 4 * index;
            scratch[at..at + 4].copy_from_slice(&entry.to_ne_bytes());
            index += 1;
        };
        if is_object {
            for (key, _) in children.iter() {
                let begin = scratch.len();
                match *key {
                    Key::Field(name) => scratch.extend_from_slice(name.as_bytes()),
                    Key::Scratch(start, end) => scratch.extend_from_within(start..end),
                }
                set_entry(scratch, JENTRY_ISSTRING, begin);
            }
        }
        for (_, value) in children.iter() {
            let begin = scratch.len();
            if value.kind == JENTRY_ISNUMERIC || value.kind == JENTRY_ISCONTAINER {
                pad(scratch, start);
            }
            scratch.extend_from_within(value.start..value.end);
            set_entry(scratch, value.kind, begin);
        }
        if scratch.len() - data_start > JENTRY_OFFLENMASK as usize {
            return Err(EncodeError(
                "a jsonb container larger than 255 MB".to_owned(),
            ));
        }
        let end = scratch.len();
        self.children.truncate(first);
        Ok(Value {
            kind: JENTRY_ISCONTAINER,
            start,
            end,
        })
    }

    /// A stored jsonb value, embedded as is; a stored scalar (a one-element pseudo array) is
    /// unwrapped to that element.
    fn embed_container(&mut self, bytes: &[u8]) -> Result<Value, EncodeError> {
        let word = |at: usize| -> Result<u32, EncodeError> {
            bytes
                .get(at..at + 4)
                .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or_else(|| EncodeError("a truncated jsonb value".to_owned()))
        };
        let header = word(0)?;
        if header & JB_FSCALAR == 0 {
            return Ok(self.push(JENTRY_ISCONTAINER, bytes));
        }
        let entry = word(4)?;
        let length = (entry & JENTRY_OFFLENMASK) as usize;
        let data = bytes
            .get(8..8 + length)
            .ok_or_else(|| EncodeError("a truncated jsonb scalar".to_owned()))?;
        Ok(self.push(entry & JENTRY_TYPEMASK, data))
    }
}

/// A jsonb datum the extension built, palloc'd in the current memory context.
pub struct StoredJsonb(pg_sys::Datum);

impl IntoDatum for StoredJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

pgrx::impl_sql_translatable!(StoredJsonb, "jsonb");

// SAFETY: the datum is a complete jsonb value in a memory context that outlives the call.
unsafe impl pgrx::callconv::BoxRet for StoredJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: as above.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

impl StoredJsonb {
    /// The datum (owned by the current memory context).
    pub fn datum(&self) -> pg_sys::Datum {
        self.0
    }

    /// Copy an encoded root container into a new jsonb datum.
    pub fn from_container(container: &[u8]) -> StoredJsonb {
        let size = container.len() + 4;
        // SAFETY: palloc raises an ERROR rather than returning NULL; the copy stays in bounds.
        unsafe {
            let datum = pg_sys::palloc(size).cast::<u8>();
            let bytes = std::slice::from_raw_parts_mut(datum, size);
            set_varsize_4b(bytes, size);
            bytes[4..].copy_from_slice(container);
            StoredJsonb(pg_sys::Datum::from(datum))
        }
    }

    /// PostgreSQL's text of this jsonb (what `payload::text` prints).
    pub fn to_text(&self) -> String {
        // SAFETY: a complete jsonb datum.
        unsafe {
            let value = self.0.cast_mut_ptr::<pg_sys::Jsonb>();
            let size = pgrx::varlena::varsize_any(value.cast()) as i32;
            container_text(&mut (*value).root, size)
        }
    }
}

/// PostgreSQL's text of a jsonb container (`JsonbToCString`), copied and its palloc'd buffer
/// freed.
///
/// # Safety
/// `container` must point to a complete, 4-byte aligned jsonb container of about `len` bytes.
pub unsafe fn container_text(container: *mut pg_sys::JsonbContainer, len: i32) -> String {
    // SAFETY: the caller's contract; JsonbToCString returns a palloc'd C string.
    unsafe {
        let text = pg_sys::JsonbToCString(std::ptr::null_mut(), container, len);
        let owned = std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned();
        pg_sys::pfree(text.cast());
        owned
    }
}

/// The kind of a stored child (its JEntry type bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Numeric,
    False,
    True,
    Null,
    Container,
}

impl Kind {
    fn from_entry(entry: u32) -> Result<Kind, EncodeError> {
        Ok(match entry & JENTRY_TYPEMASK {
            JENTRY_ISSTRING => Kind::String,
            JENTRY_ISNUMERIC => Kind::Numeric,
            JENTRY_ISBOOL_FALSE => Kind::False,
            JENTRY_ISBOOL_TRUE => Kind::True,
            JENTRY_ISNULL => Kind::Null,
            JENTRY_ISCONTAINER => Kind::Container,
            other => {
                return Err(EncodeError(format!(
                    "an unknown jsonb entry type {other:#x}"
                )))
            }
        })
    }

    fn entry_type(self) -> u32 {
        match self {
            Kind::String => JENTRY_ISSTRING,
            Kind::Numeric => JENTRY_ISNUMERIC,
            Kind::False => JENTRY_ISBOOL_FALSE,
            Kind::True => JENTRY_ISBOOL_TRUE,
            Kind::Null => JENTRY_ISNULL,
            Kind::Container => JENTRY_ISCONTAINER,
        }
    }
}

/// One child of a stored container: its key (empty in an array), kind and bytes (a numeric's
/// varlena or a container from its aligned start; a string's UTF-8).
pub struct Child<'a> {
    pub key: &'a [u8],
    pub kind: Kind,
    pub bytes: &'a [u8],
}

/// The children of a stored container (a jsonb datum's bytes after its varlena header), read as
/// PostgreSQL reads them (`getJsonbOffset`, `fillJsonbValue`); whether it is an object.
pub fn read_container(container: &[u8]) -> Result<(bool, Vec<Child<'_>>), EncodeError> {
    let truncated = || EncodeError("a truncated jsonb container".to_owned());
    let word = |at: usize| -> Result<u32, EncodeError> {
        container
            .get(at..at + 4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(truncated)
    };
    let header = word(0)?;
    let count = (header & JB_CMASK) as usize;
    let is_object = header & JB_FOBJECT != 0;
    let entries = if is_object { 2 * count } else { count };
    let data_start = 4 + 4 * entries;
    let mut ends = Vec::with_capacity(entries);
    let mut offset = 0usize;
    for index in 0..entries {
        let entry = word(4 + 4 * index)?;
        let offlen = (entry & JENTRY_OFFLENMASK) as usize;
        let end = if entry & JENTRY_HAS_OFF != 0 {
            offlen
        } else {
            offset + offlen
        };
        ends.push((offset, end, entry));
        offset = end;
    }
    let slice = |index: usize| -> Result<(Kind, &[u8]), EncodeError> {
        let (start, end, entry) = ends[index];
        let kind = Kind::from_entry(entry)?;
        let start = match kind {
            Kind::Numeric | Kind::Container => start.next_multiple_of(4),
            _ => start,
        };
        let bytes = container
            .get(data_start + start..data_start + end)
            .ok_or_else(truncated)?;
        Ok((kind, bytes))
    };
    let mut children = Vec::with_capacity(count);
    for index in 0..count {
        let (key, value) = if is_object {
            (slice(index)?.1, slice(count + index)?)
        } else {
            (&[][..], slice(index)?)
        };
        children.push(Child {
            key,
            kind: value.0,
            bytes: value.1,
        });
    }
    Ok((is_object, children))
}

impl Encoder {
    /// Start a container built child by child (`add`, then `end_container`); returns its mark.
    pub fn begin_container(&mut self) -> usize {
        self.children.len()
    }

    /// Add a child to the container being built: a scalar's or stored container's bytes as
    /// `read_container` gives them, under `key` (ignored in an array).
    pub fn add(&mut self, key: &[u8], kind: Kind, bytes: &[u8]) {
        let value = self.push(kind.entry_type(), bytes);
        self.add_value(key, value);
    }

    /// Add a child built with `begin_container` / `end_container`.
    pub fn add_value(&mut self, key: &[u8], value: Value) {
        let start = self.scratch.len();
        self.scratch.extend_from_slice(key);
        let key = Key::Scratch(start, self.scratch.len());
        self.children.push((key, value));
    }

    /// Lay out the container begun at `mark`.
    pub fn end_container(&mut self, mark: usize, is_object: bool) -> Result<Value, EncodeError> {
        self.container(mark, is_object)
    }

    /// Clear the buffers before building a new root with `begin_container`.
    pub fn reset(&mut self) {
        self.scratch.clear();
        self.children.clear();
    }

    /// The bytes of a root container built with `end_container`.
    pub fn root(&self, value: Value) -> &[u8] {
        &self.scratch[value.start..value.end]
    }
}

/// Pad with zero bytes to a multiple of 4 from `from`.
fn pad(scratch: &mut Vec<u8>, from: usize) {
    while !(scratch.len() - from).is_multiple_of(4) {
        scratch.push(0);
    }
}

/// jsonb orders object keys by length, then bytewise.
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// `numeric` bytes (4-byte varlena header, short format) of an integer, as PostgreSQL's
/// `int64_to_numeric` makes them: base-10000 digits, leading and trailing zero digits dropped.
pub fn integer_numeric(value: i64) -> ([u8; 16], usize) {
    const NUMERIC_SHORT: u16 = 0x8000;
    const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
    let mut digits = [0u16; 5];
    let mut magnitude = value.unsigned_abs();
    let mut count = 0;
    while magnitude > 0 {
        digits[count] = (magnitude % 10_000) as u16;
        magnitude /= 10_000;
        count += 1;
    }
    // digits[0] is the least significant; weight is the power of the most significant digit.
    let weight = count.saturating_sub(1) as u16;
    let mut lowest = 0;
    while lowest < count && digits[lowest] == 0 {
        lowest += 1;
    }
    let mut header = NUMERIC_SHORT | (weight & 0x3F);
    if value < 0 {
        header |= NUMERIC_SHORT_SIGN_MASK;
    }
    if count == 0 {
        header = NUMERIC_SHORT; // zero: weight 0, positive, no digits
    }
    let mut out = [0u8; 16];
    let mut len = 6;
    out[4..6].copy_from_slice(&header.to_ne_bytes());
    for digit in digits[lowest..count].iter().rev() {
        out[len..len + 2].copy_from_slice(&(*digit as i16).to_ne_bytes());
        len += 2;
    }
    set_varsize_4b(&mut out, len);
    (out, len)
}

/// Write a 4-byte varlena header for a value of `len` bytes (header included).
pub fn set_varsize_4b(bytes: &mut [u8], len: usize) {
    let header: u32 = if cfg!(target_endian = "little") {
        (len as u32) << 2
    } else {
        (len as u32) & 0x3FFF_FFFF
    };
    bytes[..4].copy_from_slice(&header.to_ne_bytes());
}

impl<'a> ser::Serializer for &'a mut Encoder {
    type Ok = Value;
    type Error = EncodeError;
    type SerializeSeq = SeqEncoder<'a>;
    type SerializeTuple = ser::Impossible<Value, EncodeError>;
    type SerializeTupleStruct = ser::Impossible<Value, EncodeError>;
    type SerializeTupleVariant = ser::Impossible<Value, EncodeError>;
    type SerializeMap = ser::Impossible<Value, EncodeError>;
    type SerializeStruct = StructEncoder<'a>;
    type SerializeStructVariant = ser::Impossible<Value, EncodeError>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<Value, EncodeError> {
        Ok(self.empty(if v {
            JENTRY_ISBOOL_TRUE
        } else {
            JENTRY_ISBOOL_FALSE
        }))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, EncodeError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<Value, EncodeError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<Value, EncodeError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<Value, EncodeError> {
        let (bytes, len) = integer_numeric(v);
        Ok(self.push(JENTRY_ISNUMERIC, &bytes[..len]))
    }

    fn serialize_u8(self, v: u8) -> Result<Value, EncodeError> {
        self.serialize_i64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<Value, EncodeError> {
        self.serialize_i64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<Value, EncodeError> {
        self.serialize_i64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<Value, EncodeError> {
        let v = i64::try_from(v).map_err(|_| unsupported("an integer above i64"))?;
        self.serialize_i64(v)
    }

    fn serialize_f32(self, _v: f32) -> Result<Value, EncodeError> {
        Err(unsupported("a float"))
    }

    fn serialize_f64(self, _v: f64) -> Result<Value, EncodeError> {
        Err(unsupported("a float"))
    }

    fn serialize_char(self, v: char) -> Result<Value, EncodeError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<Value, EncodeError> {
        Ok(self.push(JENTRY_ISSTRING, v.as_bytes()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, EncodeError> {
        match self.raw_kind.take() {
            Some(NUMERIC_TOKEN) => Ok(self.push(JENTRY_ISNUMERIC, v)),
            Some(CONTAINER_TOKEN) => self.embed_container(v),
            _ => Err(unsupported("bytes")),
        }
    }

    fn serialize_none(self) -> Result<Value, EncodeError> {
        Ok(self.empty(JENTRY_ISNULL))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, EncodeError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, EncodeError> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, EncodeError> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, EncodeError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, EncodeError> {
        if name == NUMERIC_TOKEN || name == CONTAINER_TOKEN {
            self.raw_kind = Some(name);
        }
        let result = value.serialize(&mut *self);
        self.raw_kind = None;
        result
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Value, EncodeError> {
        Err(unsupported("an enum variant with data"))
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<SeqEncoder<'a>, EncodeError> {
        Ok(SeqEncoder {
            first: self.children.len(),
            encoder: self,
        })
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, EncodeError> {
        Err(unsupported("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, EncodeError> {
        Err(unsupported("a tuple struct"))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        Err(unsupported("a tuple variant"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, EncodeError> {
        Err(unsupported("a map"))
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<StructEncoder<'a>, EncodeError> {
        Ok(StructEncoder {
            first: self.children.len(),
            encoder: self,
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        Err(unsupported("a struct variant"))
    }
}

pub struct SeqEncoder<'a> {
    encoder: &'a mut Encoder,
    first: usize,
}

impl ser::SerializeSeq for SeqEncoder<'_> {
    type Ok = Value;
    type Error = EncodeError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let element = value.serialize(&mut *self.encoder)?;
        self.encoder.children.push((Key::Field(""), element));
        Ok(())
    }

    fn end(self) -> Result<Value, EncodeError> {
        self.encoder.container(self.first, false)
    }
}

pub struct StructEncoder<'a> {
    encoder: &'a mut Encoder,
    first: usize,
}

impl ser::SerializeStruct for StructEncoder<'_> {
    type Ok = Value;
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let value = value.serialize(&mut *self.encoder)?;
        self.encoder.children.push((Key::Field(key), value));
        Ok(())
    }

    fn end(self) -> Result<Value, EncodeError> {
        self.encoder.container(self.first, true)
    }
}

#[cfg(test)]
mod tests {
    //! A decoder that follows PostgreSQL's reading rules (`fillJsonbValue`, `getJsonbOffset`)
    //! turns the encoder's output back into JSON; the cases compare it with serde_json's view of
    //! the same values.
    use super::*;
    use serde::Serialize;
    use serde_json::{json, Value as Json};

    fn word(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn numeric_text(bytes: &[u8]) -> String {
        let header = u16::from_ne_bytes([bytes[4], bytes[5]]);
        assert_eq!(header & 0xC000, 0x8000, "short numeric");
        let negative = header & 0x2000 != 0;
        let weight = (header & 0x3F) as i32 - if header & 0x40 != 0 { 64 } else { 0 };
        let digits: Vec<i64> = bytes[6..]
            .chunks(2)
            .map(|d| i16::from_ne_bytes([d[0], d[1]]) as i64)
            .collect();
        let mut value: i64 = 0;
        for (i, digit) in digits.iter().enumerate() {
            value += digit * 10_000i64.pow((weight - i as i32) as u32);
        }
        if negative {
            value = -value;
        }
        value.to_string()
    }

    /// Decode the container at `bytes` (4-byte aligned relative to the datum start).
    fn decode(bytes: &[u8]) -> Json {
        let header = word(bytes, 0);
        let count = (header & JB_CMASK) as usize;
        let is_object = header & JB_FOBJECT != 0;
        let entries = if is_object { 2 * count } else { count };
        let data = 4 + 4 * entries;
        let offset_of = |index: usize| -> usize {
            // getJsonbOffset: walk back to the last entry that holds an offset.
            let mut offset = 0;
            let mut i = index;
            while i > 0 {
                i -= 1;
                let entry = word(bytes, 4 + 4 * i);
                offset += (entry & JENTRY_OFFLENMASK) as usize;
                if entry & JENTRY_HAS_OFF != 0 {
                    break;
                }
            }
            offset
        };
        let element = |index: usize| -> Json {
            let entry = word(bytes, 4 + 4 * index);
            let start = offset_of(index);
            let end = if entry & JENTRY_HAS_OFF != 0 {
                (entry & JENTRY_OFFLENMASK) as usize
            } else {
                start + (entry & JENTRY_OFFLENMASK) as usize
            };
            let aligned = (start + 3) & !3;
            match entry & JENTRY_TYPEMASK {
                JENTRY_ISSTRING => Json::String(
                    String::from_utf8(bytes[data + start..data + end].to_vec()).unwrap(),
                ),
                JENTRY_ISNUMERIC => {
                    let raw = &bytes[data + aligned..data + end];
                    let len = (word(raw, 0) >> 2) as usize;
                    assert_eq!(len, raw.len(), "numeric length");
                    Json::Number(numeric_text(raw).parse().unwrap())
                }
                JENTRY_ISBOOL_FALSE => Json::Bool(false),
                JENTRY_ISBOOL_TRUE => Json::Bool(true),
                JENTRY_ISNULL => Json::Null,
                JENTRY_ISCONTAINER => decode(&bytes[data + aligned..data + end]),
                other => panic!("unknown entry type {other:x}"),
            }
        };
        if is_object {
            let mut map = serde_json::Map::new();
            let mut previous: Option<String> = None;
            for i in 0..count {
                let Json::String(key) = element(i) else {
                    panic!("key is not a string")
                };
                if let Some(previous) = &previous {
                    assert_eq!(
                        key_order(previous.as_bytes(), key.as_bytes()),
                        std::cmp::Ordering::Less,
                        "keys sorted"
                    );
                }
                map.insert(key.clone(), element(count + i));
                previous = Some(key);
            }
            Json::Object(map)
        } else {
            Json::Array((0..count).map(element).collect())
        }
    }

    fn round_trip<T: Serialize>(value: &T) -> Json {
        let mut encoder = Encoder::default();
        let bytes = encoder.encode(value).unwrap().to_vec();
        decode(&bytes)
    }

    #[derive(Serialize)]
    struct Inner {
        flag: bool,
        nothing: Option<i64>,
        list: Vec<i64>,
    }

    #[derive(Serialize)]
    struct Outer {
        zeta: &'static str,
        id: i64,
        a: Inner,
        #[serde(rename = "type")]
        kind: String,
        empty: Vec<Inner>,
    }

    #[test]
    fn structs_round_trip_with_sorted_keys_and_aligned_numbers() {
        let value = Outer {
            zeta: "ü \"quoted\"",
            id: 789,
            a: Inner {
                flag: true,
                nothing: None,
                list: vec![0, -5, 10_000, 123_456_789, i64::MAX, i64::MIN + 1],
            },
            kind: "x".into(),
            empty: vec![],
        };
        assert_eq!(
            round_trip(&value),
            json!({"zeta": "ü \"quoted\"", "id": 789, "type": "x", "empty": [],
                   "a": {"flag": true, "nothing": null,
                         "list": [0, -5, 10000, 123456789, i64::MAX, i64::MIN + 1]}})
        );
    }

    #[test]
    fn integers_match_postgres_numeric_bytes() {
        // (value, n_header, digits) as PostgreSQL's int64_to_numeric stores them.
        let cases: [(i64, u16, &[i16]); 6] = [
            (0, 0x8000, &[]),
            (7, 0x8000, &[7]),
            (10_000, 0x8001, &[1]),
            (20_001, 0x8001, &[2, 1]),
            (-42, 0xA000, &[42]),
            (1_0000_0000_0000, 0x8003, &[1]),
        ];
        for (value, header, digits) in cases {
            let (bytes, len) = integer_numeric(value);
            assert_eq!(len, 6 + 2 * digits.len(), "{value}");
            assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), header, "{value}");
            let stored: Vec<i16> = bytes[6..len]
                .chunks(2)
                .map(|d| i16::from_ne_bytes([d[0], d[1]]))
                .collect();
            assert_eq!(stored, digits, "{value}");
        }
    }

    /// Rebuild a stored container child by child, as `redaction::rewrite` does.
    fn rebuild(encoder: &mut Encoder, container: &[u8]) -> Value {
        let (is_object, children) = read_container(container).unwrap();
        let mark = encoder.begin_container();
        for child in &children {
            if child.kind == Kind::Container {
                let value = rebuild(encoder, child.bytes);
                encoder.add_value(child.key, value);
            } else {
                encoder.add(child.key, child.kind, child.bytes);
            }
        }
        encoder.end_container(mark, is_object).unwrap()
    }

    #[test]
    fn a_container_read_and_rebuilt_child_by_child_is_the_same_bytes() {
        let outers: Vec<Outer> = (0..70)
            .map(|i| Outer {
                zeta: "z",
                id: i * 1_000_003,
                a: Inner {
                    flag: i % 2 == 0,
                    nothing: (i % 3 == 0).then_some(i),
                    list: (0..i % 40).collect(),
                },
                kind: "k".repeat(i as usize % 9),
                empty: Vec::new(),
            })
            .collect();
        #[derive(Serialize)]
        struct Root {
            outers: Vec<Outer>,
            name: &'static str,
        }
        let mut encoder = Encoder::default();
        let original = encoder
            .encode(&Root {
                outers,
                name: "root",
            })
            .unwrap()
            .to_vec();
        let mut rebuilder = Encoder::default();
        let root = rebuild(&mut rebuilder, &original);
        assert_eq!(rebuilder.root(root), &original[..]);
        let (is_object, children) = read_container(&original).unwrap();
        assert!(is_object);
        let keys: Vec<&[u8]> = children.iter().map(|child| child.key).collect();
        assert_eq!(keys, [&b"name"[..], &b"outers"[..]]);
    }

    #[test]
    fn many_keys_use_stored_offsets_every_32_entries() {
        #[derive(Serialize)]
        struct Wide {
            list: Vec<String>,
        }
        let list: Vec<String> = (0..100).map(|i| "v".repeat(i % 7)).collect();
        let expected = json!({ "list": list.clone() });
        assert_eq!(round_trip(&Wide { list }), expected);
    }

    #[test]
    fn embedded_containers_and_scalars_are_copied_in() {
        #[derive(Serialize)]
        struct Holder<'a> {
            object: Container<'a>,
            scalar: Container<'a>,
        }
        let mut encoder = Encoder::default();
        #[derive(Serialize)]
        struct Cf {
            team: &'static str,
            n: i64,
        }
        let object = encoder.encode(&Cf { team: "t", n: 5 }).unwrap().to_vec();
        // A stored scalar: a one-element array flagged as scalar.
        let mut scalar = encoder.encode(&vec![42i64]).unwrap().to_vec();
        let header = word(&scalar, 0) | JB_FSCALAR;
        scalar[0..4].copy_from_slice(&header.to_ne_bytes());
        let holder = Holder {
            object: Container(&object),
            scalar: Container(&scalar),
        };
        assert_eq!(
            round_trip(&holder),
            json!({"object": {"team": "t", "n": 5}, "scalar": 42})
        );
    }
}
