//! The objects handed to JavaScript (`Status` and its parts, `Conflict`, `ChangeEvent`), expanded from the
//! core's list (`harmonylite::records!`, ADR 0019): each record becomes a `#[napi(object)]` struct with the
//! core's fields and docs, and its conversion from the core's type. A field added in the core appears here;
//! one of a type [`js_ty!`] cannot map stops the crate compiling (`test/conflicts.test.js` also compares the
//! objects' keys with the core's serde output).
//!
//! napi-rs writes `index.d.ts` from the struct's syntax, so the JavaScript types are chosen by matching the
//! list's type tokens ([`js_ty!`]): counts and times are `number` (`i64`), node ids, stream positions and
//! clock stamps `bigint`, the core's enums strings with a union type, SQLite values as in `events.rs`.

use std::collections::BTreeMap;

use napi::bindgen_prelude::BigInt;
use napi_derive::napi;

use crate::events::{sql_value, SqlValue};

harmonylite::from_core_conversions!(u32, i64, bool, String);

/// A count or a time in ms: a JavaScript number (exact to 2^53, far beyond any count).
impl FromCore<u64> for i64 {
    fn from_core(core: u64) -> i64 {
        i64::try_from(core).unwrap_or(i64::MAX)
    }
}

/// A node id, stream position or clock stamp: a `bigint`, all 64 bits exact.
impl FromCore<u64> for BigInt {
    fn from_core(core: u64) -> BigInt {
        BigInt::from(core)
    }
}

impl FromCore<harmonylite::Value> for SqlValue {
    fn from_core(core: harmonylite::Value) -> SqlValue {
        sql_value(core)
    }
}

/// A row's column values: column name to value.
impl FromCore<Vec<(String, harmonylite::Value)>> for BTreeMap<String, SqlValue> {
    fn from_core(core: Vec<(String, harmonylite::Value)>) -> BTreeMap<String, SqlValue> {
        core.into_iter()
            .map(|(column, value)| (column, sql_value(value)))
            .collect()
    }
}

/// Maps a field's type tokens from the core's list to `[attributes] [Rust type]` for napi, handing them to
/// `$cb!` before its other arguments. A type with no rule here stops the crate compiling; an enum's union
/// must name every variant (checked by the `unions_name_every_variant` test).
macro_rules! js_ty {
    ([u32] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [u32]} };
    ([u64] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [i64]} };
    ([i64] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [i64]} };
    ([bool] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [bool]} };
    ([String] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [String]} };
    ([NodeId] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [BigInt]} };
    ([Seq] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [BigInt]} };
    ([Hlc] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [BigInt]} };
    ([PauseKind] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "'schema' | 'constraint' | 'invalid' | 'clock' | 'queued'")]] [String]}
    };
    ([ReplicaRole] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "'active' | 'attached'")]] [String]}
    };
    ([ConnectionState] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "'connected' | 'disconnected' | 'connecting'")]] [String]}
    };
    ([ConflictKind] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(
            ts_type = "'change_lost' | 'values_overwritten' | 'deleted_with_edits' | 'key_moved' | 'constraint' | 'table_dropped'"
        )]] [String]}
    };
    ([ChangeOp] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "'insert' | 'update' | 'delete'")]] [String]}
    };
    ([Vec<Value>] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "Array<null | bigint | number | string | Buffer>")]] [Vec<SqlValue>]}
    };
    ([Option<Vec<Value>>] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "Array<null | bigint | number | string | Buffer>")]] [Option<Vec<SqlValue>>]}
    };
    ([Vec<(String, Value)>] $cb:ident ($($args:tt)*)) => {
        $cb! {$($args)* [#[napi(ts_type = "Record<string, null | bigint | number | string | Buffer>")]] [BTreeMap<String, SqlValue>]}
    };
    ([Option<$t:ident>] $cb:ident ($($args:tt)*)) => { js_ty! {[$t] js_wrap(Option $cb ($($args)*))} };
    ([Vec<$t:ident>] $cb:ident ($($args:tt)*)) => { js_ty! {[$t] js_wrap(Vec $cb ($($args)*))} };
    // The list's own records, expanded below under the same names.
    ([$record:ident] $cb:ident ($($args:tt)*)) => { $cb! {$($args)* [] [$record]} };
}

/// `Option<T>` / `Vec<T>` of a type mapped without attributes (a union would no longer describe it).
macro_rules! js_wrap {
    ($wrapper:ident $cb:ident ($($args:tt)*) [] [$($ty:tt)*]) => {
        $cb! {$($args)* [] [$wrapper<$($ty)*>]}
    };
}

/// Expands one item of the core's list: a record into its napi object and conversion (field by field,
/// each type through [`js_ty!`]); an enum into its conversion to its string.
macro_rules! js_record {
    // One field: map its type, then append it (`@push`).
    (@field $docs:tt $name:ident $core:tt $decls:tt $names:tt
        $(#[doc = $fdoc:literal])* $field:ident : [$($ty:tt)*] $(serde($($serde:tt)*))?, $($rest:tt)*
    ) => {
        js_ty! {[$($ty)*] js_record(@push $docs $name $core $decls $names [$(#[doc = $fdoc])*] $field [$($rest)*])}
    };
    (@push $docs:tt $name:ident $core:tt [$($decl:tt)*] [$($done:ident)*] [$($fdoc:tt)*] $field:ident
        [$($rest:tt)*] [$($attr:tt)*] [$($jty:tt)*]
    ) => {
        js_record! {@field $docs $name $core [$($decl)* $($fdoc)* $($attr)* pub $field: $($jty)*,]
            [$($done)* $field] $($rest)*}
    };
    // Every field done: the object and its conversion.
    (@field [$($doc:tt)*] $name:ident ($core:path) [$($decl:tt)*] [$($field:ident)*]) => {
        $($doc)*
        #[napi(object, object_from_js = false, use_nullable = true)]
        pub struct $name {
            $($decl)*
        }

        harmonylite::from_core_record!($name ($core) { $($field),* });
    };
    (
        $(#[doc = $doc:literal])*
        record $name:ident $core:tt [$($derive:tt)*] { $($fields:tt)* }
    ) => {
        js_record! {@field [$(#[doc = $doc])*] $name $core [] [] $($fields)*}
    };
    // An enum is its string in JavaScript (the variant's stable name; its TS union is in `js_ty!`).
    (
        $(#[doc = $doc:literal])*
        enum $name:ident ($core:path) [$($derive:tt)*] {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $wire:literal, )*
        }
    ) => {
        impl FromCore<$core> for String {
            fn from_core(core: $core) -> String {
                core.as_str().to_string()
            }
        }
    };
}

harmonylite::records!(js_record);

#[cfg(test)]
mod tests {
    /// The `ts_type` a field of type `$ty` gets.
    macro_rules! ts_type_of {
        ($($ty:tt)*) => {
            js_ty! {[$($ty)*] ts_literal()}
        };
    }
    macro_rules! ts_literal {
        ([#[napi(ts_type = $ts:literal)]] [$($ty:tt)*]) => {
            $ts
        };
    }

    fn union<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
        all.iter()
            .map(|&variant| format!("'{}'", name(variant)))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    #[test]
    fn unions_name_every_variant() {
        use harmonylite::records::*;
        assert_eq!(
            ts_type_of!(ReplicaRole),
            union(ReplicaRole::ALL, ReplicaRole::as_str)
        );
        assert_eq!(
            ts_type_of!(ConnectionState),
            union(ConnectionState::ALL, ConnectionState::as_str)
        );
        assert_eq!(
            ts_type_of!(ConflictKind),
            union(ConflictKind::ALL, ConflictKind::as_str)
        );
        assert_eq!(
            ts_type_of!(ChangeOp),
            union(ChangeOp::ALL, ChangeOp::as_str)
        );
    }
}
