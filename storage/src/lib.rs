//! The message store. Filled by the storage issue (#3); see DESIGN.md "Storage".
