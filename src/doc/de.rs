//! Typed deserialization straight from the positioned tree: the fast path of
//! loading. When it fails, the loader falls back to the schema check, which
//! explains every structural problem with its position; when it succeeds there is
//! nothing to explain and the (costlier) JSON copy and schema check are skipped.

use super::yaml::{Node, Value};
use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};

pub struct NodeDe<'n, 'a>(pub &'n Node<'a>);

impl<'n, 'a> IntoDeserializer<'n, Error> for NodeDe<'n, 'a> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'n, 'a> de::Deserializer<'n> for NodeDe<'n, 'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.0.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDeserializer::new(items.iter().map(NodeDe))),
            Value::Map(entries) => visitor.visit_map(MapDeserializer::new(
                entries.iter().map(|(k, v)| (k.name.as_ref(), NodeDe(v))),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'n>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.0.value {
            Value::Str(s) => visitor.visit_enum(s.as_ref().into_deserializer()),
            _ => Err(de::Error::custom("expected a string")),
        }
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'n>>
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        a: Option<i64>,
        b: Vec<String>,
        c: f64,
        m: Mode,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Breach,
        Routine,
    }

    #[test]
    fn deserializes_structs_options_enums_and_refuses_unknown_keys() {
        let root = crate::doc::yaml::parse("a: 3\nb: [x, y]\nc: 2\nm: breach\n").unwrap();
        let t = T::deserialize(NodeDe(&root)).unwrap();
        assert_eq!(
            t,
            T {
                a: Some(3),
                b: vec!["x".into(), "y".into()],
                c: 2.0,
                m: Mode::Breach
            }
        );
        let root = crate::doc::yaml::parse("a: ~\nb: []\nc: 1\nm: routine\nz: 1\n").unwrap();
        assert!(T::deserialize(NodeDe(&root)).is_err());
    }
}
