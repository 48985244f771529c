pub const SET_FILE: u32 = 1;

pub const FILE_NAME: u32 = 1;
pub const FILE_PACKAGE: u32 = 2;
pub const FILE_MESSAGE_TYPE: u32 = 4;
pub const FILE_ENUM_TYPE: u32 = 5;
pub const FILE_SERVICE: u32 = 6;
pub const FILE_EXTENSION: u32 = 7;
pub const FILE_OPTIONS: u32 = 8;
pub const FILE_SYNTAX: u32 = 12;
pub const FILE_EDITION: u32 = 14;

pub const MESSAGE_NAME: u32 = 1;
pub const MESSAGE_FIELD: u32 = 2;
pub const MESSAGE_NESTED_TYPE: u32 = 3;
pub const MESSAGE_ENUM_TYPE: u32 = 4;
pub const MESSAGE_EXTENSION_RANGE: u32 = 5;
pub const MESSAGE_EXTENSION: u32 = 6;
pub const MESSAGE_OPTIONS: u32 = 7;
pub const MESSAGE_ONEOF_DECL: u32 = 8;
pub const EXTENSION_RANGE_OPTIONS: u32 = 3;

pub const FIELD_NAME: u32 = 1;
pub const FIELD_LABEL: u32 = 4;
pub const FIELD_TYPE: u32 = 5;
pub const FIELD_TYPE_NAME: u32 = 6;
pub const FIELD_OPTIONS: u32 = 8;
pub const FIELD_ONEOF_INDEX: u32 = 9;
pub const FIELD_PROTO3_OPTIONAL: u32 = 17;

pub const ONEOF_NAME: u32 = 1;
pub const ONEOF_OPTIONS: u32 = 2;

pub const ENUM_NAME: u32 = 1;
pub const ENUM_VALUE: u32 = 2;
pub const ENUM_OPTIONS: u32 = 3;
pub const ENUM_VALUE_NAME: u32 = 1;
pub const ENUM_VALUE_NUMBER: u32 = 2;
pub const ENUM_VALUE_OPTIONS: u32 = 3;

pub const SERVICE_METHOD: u32 = 2;
pub const SERVICE_OPTIONS: u32 = 3;
pub const METHOD_OPTIONS: u32 = 4;

pub const MESSAGE_OPTIONS_MAP_ENTRY: u32 = 7;
pub const FIELD_OPTIONS_PACKED: u32 = 2;

/// `features` in each options message: the numbers differ per message.
pub const FEATURES_FILE: u32 = 50;
pub const FEATURES_MESSAGE: u32 = 12;
pub const FEATURES_FIELD: u32 = 21;
pub const FEATURES_ONEOF: u32 = 1;
pub const FEATURES_ENUM: u32 = 7;
pub const FEATURES_ENUM_VALUE: u32 = 2;
pub const FEATURES_SERVICE: u32 = 34;
pub const FEATURES_METHOD: u32 = 35;
pub const FEATURES_EXTENSION_RANGE: u32 = 50;

pub const FEATURE_FIELD_PRESENCE: u32 = 1;
pub const FEATURE_ENUM_TYPE: u32 = 2;
pub const FEATURE_REPEATED_FIELD_ENCODING: u32 = 3;
pub const FEATURE_UTF8_VALIDATION: u32 = 4;
pub const FEATURE_MESSAGE_ENCODING: u32 = 5;
pub const FEATURE_JSON_FORMAT: u32 = 6;

pub const LABEL_OPTIONAL: u64 = 1;
pub const LABEL_REQUIRED: u64 = 2;
pub const LABEL_REPEATED: u64 = 3;

pub const TYPE_DOUBLE: u64 = 1;
pub const TYPE_STRING: u64 = 9;
pub const TYPE_GROUP: u64 = 10;
pub const TYPE_MESSAGE: u64 = 11;
pub const TYPE_BYTES: u64 = 12;
pub const TYPE_SINT64: u64 = 18;

pub const EDITION_2023: i32 = 1000;
pub const EDITION_2024: i32 = 1001;
