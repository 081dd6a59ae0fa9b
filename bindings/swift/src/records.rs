//! The records handed to Swift (`Status` and its parts, `Conflict`, `ChangeEvent`) and their enums,
//! expanded from the core's list (`harmonylite::records!`, ADR 0019): each gets a `uniffi::Record` (or
//! `uniffi::Enum`) with the core's fields and docs, and its conversion from the core's type. A field added in
//! the core appears here; one of a type this file cannot map stops the crate compiling
//! (`StatusFieldTests` also compares the records with the core's serde output).

use std::collections::HashMap;

use crate::events::Value;

harmonylite::from_core_conversions!(u32, u64, i64, bool, String);

impl FromCore<harmonylite::Value> for Value {
    fn from_core(core: harmonylite::Value) -> Value {
        core.into()
    }
}

/// A row's column values: column name to value.
impl FromCore<Vec<(String, harmonylite::Value)>> for HashMap<String, Value> {
    fn from_core(core: Vec<(String, harmonylite::Value)>) -> HashMap<String, Value> {
        core.into_iter()
            .map(|(column, value)| (column, value.into()))
            .collect()
    }
}

/// The Swift-facing type of a field, from the core list's type tokens.
macro_rules! swift_ty {
    (u32) => { u32 };
    (u64) => { u64 };
    (i64) => { i64 };
    (bool) => { bool };
    (String) => { String };
    (NodeId) => { u64 };
    (Seq) => { u64 };
    (Hlc) => { u64 };
    (PauseKind) => { String };
    (Value) => { Value };
    (Vec<(String, Value)>) => { HashMap<String, Value> };
    (Option<Vec<$t:ident>>) => { Option<Vec<swift_ty!($t)>> };
    (Option<$t:ident>) => { Option<swift_ty!($t)> };
    (Vec<$t:ident>) => { Vec<swift_ty!($t)> };
    // The list's own records and enums, expanded below under the same names.
    ($record:ident) => { $record };
}

macro_rules! swift_record {
    (
        $(#[doc = $doc:literal])*
        enum $name:ident ($core:path) [$($derive:tt)*] {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $wire:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
        pub enum $name {
            $( $(#[doc = $vdoc])* $variant, )*
        }

        impl From<$core> for $name {
            fn from(core: $core) -> $name {
                type Core = $core;
                match core {
                    $( Core::$variant => $name::$variant, )*
                }
            }
        }

        impl From<$name> for $core {
            fn from(swift: $name) -> $core {
                type Core = $core;
                match swift {
                    $( $name::$variant => Core::$variant, )*
                }
            }
        }

        impl FromCore<$core> for $name {
            fn from_core(core: $core) -> $name {
                core.into()
            }
        }
    };
    (
        $(#[doc = $doc:literal])*
        record $name:ident ($core:path) [$($derive:tt)*] {
            $(
                $(#[doc = $fdoc:literal])*
                $field:ident : [$($ty:tt)*] $(serde($($serde:tt)*))?,
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, uniffi::Record)]
        pub struct $name {
            $(
                $(#[doc = $fdoc])*
                pub $field: swift_ty!($($ty)*),
            )*
        }

        harmonylite::from_core_record!($name ($core) { $($field),* });
    };
}

harmonylite::records!(swift_record);
