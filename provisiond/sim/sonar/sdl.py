"""The fake Sonar's schema, as SDL: a subset of Sonar's real GraphQL schema.

Read by ``schema.build``. Every type, field, argument, nullability, default, enum and
scalar here is Sonar's own, cut from its published schema (the same cut as
``tests/sonar/real_schema_subset.graphql``, without the descriptions, which a test
holds this to): the types provisiond touches, each list relation with Sonar's
arguments (``paginator``, ``sorter``, ``search``, ``reverse_relation_filters``, the
field filters of the fields kept here, ``soft:`` on every ``ip_assignments``).
"""

SDL = '''
type Account {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  account_status_id: Int64Bit!
  archived_at: Datetime
  is_delinquent: Boolean!
  name: String!
  account_status(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    activates_account: Boolean
    name: String
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AccountStatus
  addresses(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    serviceable: Boolean
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AddressConnection!
  ip_assignments(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    ip_pool_id: Int64Bit
    ipassignmentable_id: Int64Bit
    ipassignmentable_type: IpassignmentableType
    soft: Boolean
    subnet: SubnetScalar
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): IpAssignmentConnection!
  account_groups(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    name: String
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AccountGroupConnection!
  radius_accounts(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    account_id: Int64Bit
    username: String
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): RadiusAccountConnection!
  uninventoried_mac_addresses(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    account_id: Int64Bit
    mac_address: MacAddress
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): UninventoriedMacAddressConnection!
}
type AccountConnection {
  entities: [Account]!
  page_info: PageInfo!
}
type AccountGroup {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  name: String!
  accounts(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    account_status_id: Int64Bit
    archived_at: Datetime
    is_delinquent: Boolean
    name: String
    include_archived: Boolean
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AccountConnection!
}
type AccountGroupConnection {
  entities: [AccountGroup]!
  page_info: PageInfo!
}
type AccountStatus {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  activates_account: Boolean!
  name: String!
}
type AccountStatusConnection {
  entities: [AccountStatus]!
  page_info: PageInfo!
}
type Address {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  serviceable: Boolean!
  inventory_items(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): InventoryItemConnection!
}
type AddressConnection {
  entities: [Address]!
  page_info: PageInfo!
}
type InventoryItem {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  inventory_model_field_data(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    value: String
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): InventoryModelFieldDataConnection!
  ip_assignments(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    ip_pool_id: Int64Bit
    ipassignmentable_id: Int64Bit
    ipassignmentable_type: IpassignmentableType
    soft: Boolean
    subnet: SubnetScalar
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): IpAssignmentConnection!
}
type InventoryItemConnection {
  entities: [InventoryItem]!
  page_info: PageInfo!
}
type InventoryModelFieldData {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  value: String!
  ip_assignments(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    ip_pool_id: Int64Bit
    ipassignmentable_id: Int64Bit
    ipassignmentable_type: IpassignmentableType
    soft: Boolean
    subnet: SubnetScalar
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): IpAssignmentConnection!
}
type InventoryModelFieldDataConnection {
  entities: [InventoryModelFieldData]!
  page_info: PageInfo!
}
type IpAssignment {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  ip_pool_id: Int64Bit
  ipassignmentable_id: Int64Bit!
  ipassignmentable_type: IpassignmentableType!
  soft: Boolean!
  subnet: SubnetScalar!
}
type IpAssignmentConnection {
  entities: [IpAssignment]!
  page_info: PageInfo!
}
type PageInfo {
  page: Int!
  total_pages: Int!
  total_count: Int!
  records_per_page: Int!
}
type Query {
  account_groups(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    name: String
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AccountGroupConnection!
  account_statuses(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    activates_account: Boolean
    name: String
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AccountStatusConnection!
  accounts(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    account_status_id: Int64Bit
    archived_at: Datetime
    is_delinquent: Boolean
    name: String
    include_archived: Boolean
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): AccountConnection!
}
type RadiusAccount {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  account_id: Int64Bit!
  username: String!
  ip_assignments(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    ip_pool_id: Int64Bit
    ipassignmentable_id: Int64Bit
    ipassignmentable_type: IpassignmentableType
    soft: Boolean
    subnet: SubnetScalar
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): IpAssignmentConnection!
}
type RadiusAccountConnection {
  entities: [RadiusAccount]!
  page_info: PageInfo!
}
type UninventoriedMacAddress {
  id: Int64Bit!
  created_at: Datetime!
  updated_at: Datetime!
  account_id: Int64Bit!
  mac_address: MacAddress!
  ip_assignments(
    id: Int64Bit
    created_at: Datetime
    updated_at: Datetime
    ip_pool_id: Int64Bit
    ipassignmentable_id: Int64Bit
    ipassignmentable_type: IpassignmentableType
    soft: Boolean
    subnet: SubnetScalar
    paginator: Paginator
    sorter: [Sorter]
    search: [Search]
    reverse_relation_filters: [ReverseRelationFilter]
  ): IpAssignmentConnection!
}
type UninventoriedMacAddressConnection {
  entities: [UninventoriedMacAddress]!
  page_info: PageInfo!
}
input Paginator {
  page: Int!
  records_per_page: Int!
}
input ReverseRelationFilter {
  relation: String!
  search: [Search]
  general_search: String
  is_empty: Boolean = false
  group: String = "1"
}
input Search {
  string_fields: [SearchStringField]
  integer_fields: [SearchIntegerField]
  float_fields: [SearchFloatField]
  datetime_fields: [SearchDatetimeField]
  date_fields: [SearchDateField]
  ip_address_fields: [SearchIpAddressField]
  boolean_fields: [SearchBooleanField]
  geopoint_fields: [SearchGeopointVertex]
  unset_fields: [String]
  exists: [String]
  reverse_relation_filters: [ReverseRelationFilter]
}
input SearchBooleanField {
  attribute: String!
  search_value: Boolean!
  operator: BooleanOperator
}
input SearchDateField {
  attribute: String!
  search_value: Date!
  operator: RangeOperator!
}
input SearchDatetimeField {
  attribute: String!
  search_value: Datetime!
  operator: RangeOperator!
}
input SearchFloatField {
  attribute: String!
  search_value: Float!
  operator: RangeOperator!
}
input SearchGeopointVertex {
  latitude: Latitude!
  longitude: Longitude!
}
input SearchIntegerField {
  attribute: String!
  search_value: Int64Bit!
  operator: RangeOperator!
}
input SearchIpAddressField {
  attribute: String!
  search_value: String!
  match: Boolean!
}
input SearchStringField {
  attribute: String!
  search_value: String!
  match: Boolean!
  partial_matching: Boolean = true
}
input Sorter {
  attribute: String!
  direction: SortDirection!
}
enum BooleanOperator {
  EQ
  NEQ
}
enum IpassignmentableType {
  Account
  InventoryItem
  InventoryModelFieldData
  RadiusAccount
  UninventoriedMacAddress
  NetworkSite
}
enum RangeOperator {
  GTE
  GT
  LTE
  LT
  EQ
  NEQ
}
enum SortDirection {
  ASC
  DESC
}
scalar Date
scalar Datetime
scalar Int64Bit
scalar Latitude
scalar Longitude
scalar MacAddress
scalar SubnetScalar
'''
