//! Closed sets written as fixed strings.
//!
//! Actions, states, modes and kinds travel in signed bodies, audit entries,
//! stored rows and wire messages as short strings (`"grant"`,
//! `"released"`, `"count"`). [`closed_set!`] declares such a set as an enum
//! whose members serialize to exactly those strings, so a typed value
//! signs, stores and verifies byte for byte as the string did, and a
//! string outside the set is refused when it is read rather than carried
//! along.

/// Declares an enum whose members are written as fixed strings, with
/// `ALL`, `as_str`, `parse`, `Display`, and serde and SQLite as that
/// string.
macro_rules! closed_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $v,)*
        }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &[$name] = &[$($name::$v,)*];

            /// The string this member is written as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                }
            }

            /// The member written as `s`, if any.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($s => Some($name::$v),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    serde::de::Error::unknown_variant(&s, &[$($s,)*])
                })
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<$name> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("not a {}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

pub(crate) use closed_set;
