//! Fixed key pairs for tests only (generated once with the `openssl` CLI:
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`,
//! `openssl genpkey -algorithm ED25519`, public halves with `openssl pkey -pubout`).
//! Never use these outside tests.

pub(super) const RSA_PRIVATE_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDgwh1f9pOuNkH1\n\
Vo7SCXNt1+eDfwJmGa+08SjhtU11ybUn7WNb3b+uOmKEoTsCZHL0beqBlPhMpt3p\n\
Ta3OggVDatCSmJuE2iboXEQM13Fn8brVZOmZoALMGsdiQN9lHu2zMxzTwYHGXf2u\n\
ZaVJ2DuLqF64DwIDpc238ML4mqCvgBB30ffgCdMwFh/V4ym6eW8WPqUFDx8/u1X/\n\
sa3Fc85snY6SkpFp6vZ1LWJsqP544Rx1cDywhrsh8f5WoWJp8Y/GxEXFZnPTERbz\n\
fox4nTflOV7IOkG6CR+QX2X4p8u8BMJQhlUHfIer9QdeSbK8AQRfQLBmymVNCoU/\n\
ovCxdAABAgMBAAECggEADF3h6+PPYGiP3IX0uc3XUhXtISkd4qxLJLOYQkMNjguZ\n\
Mic3rlhXMaj4vr94VbtdL+HUY2jk+KK91xZ1F8XDsF/yNf67n+W4+lQJUoOQM93z\n\
H8a7q75IKR7YFanoINJA1flb/rLJBzcovC3PmG6TaC3NeGcq/zRiS1qt/6vSZ5WT\n\
6eBMwYCLngcuV0451lWc+B+GmfvnS8/q5fo0fg/EMgvB5lZwjzM7LOeb7xGJwE6G\n\
YazaMbMd9rNIxc+hn/oyaECbijdthRORg8XLTUfT0U1NcR0AU+yZBhIm4F8vdiNK\n\
VVIr8ct3xalgrA43rsdPDJLZWsTfV+YWAbPMyG6gOQKBgQD2/5nxmsx06vWXNrs1\n\
b3eIsSs4t1R532CyrErAhvSfglTgDG78DKpIvYu3T8kG7b9Lg3J8D+2nJXEkf57D\n\
4CPBmTFMyI4lnEKKgvXWXEiJbfifMWv3jQhuvJIKMdvULzzl/HjgXzIZK3dp9LSx\n\
Fml/OBqUrFJPnxFNRH/IKygakwKBgQDo8wVuyTGlXTU8xFDoLzeetfj2WTGuV3b8\n\
EwEW+A238c//cvJki/sUOKQFyyDwK9cVOePrnBpzaeK3ZtAcyo/fU43gOUMY7wbf\n\
+VCxWU3uIx4xbpeqO/zKMf9FKeX2UfH/NqAtzxgzEl7Hw64DtLbE6a0kRk8K+dWW\n\
RkLtueETmwKBgQCOyzY0d0m8ThmtUfbo7Ygtfj9+in5L9tfwc6rDo0HI9ZAb9xQy\n\
ox/O7cXYNEgDuW7eOR/2mT7LYtoGP8GJfAsv4WCfA1MqaywM56k4RCGrUehqIChK\n\
9T3qxxmmyyxLfwO18j/vdxl/c6GVn+LWfh5/be/wA6+SWGOoR/GXx1toAQKBgQCB\n\
M5D20lZbzmehrYzmSpIB0BImqG/ar55Jz0ySbcBGHrNrjliMlesLWyL2J6S8MMSZ\n\
fENCwZEWJEtfx4F0BpFnn1MYYwopASICBajQxKRpiUbMyfcKrzzU9IgN12A5j1e2\n\
YpjS74MPiIfTKmAQpCGe87BZZzmd79WcBJpIegkxMwKBgC8AWQOyeJGE5p2+e2EM\n\
KkWuj3gwnVvsJgME41UXDc28EFIG/PB4iu89qwlozo37ea3JnkcVtRYNkY5+YQW/\n\
llbYED4nQtvqk/ychvdTgV4yDnWRD8Kx92phpGGXmwBs6oEfICzinjRn4CL1qHdI\n\
OCe6AkMf9O0m9WVX0jJ33ekd\n\
-----END PRIVATE KEY-----\n\
";

pub(super) const RSA_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA4MIdX/aTrjZB9VaO0glz\n\
bdfng38CZhmvtPEo4bVNdcm1J+1jW92/rjpihKE7AmRy9G3qgZT4TKbd6U2tzoIF\n\
Q2rQkpibhNom6FxEDNdxZ/G61WTpmaACzBrHYkDfZR7tszMc08GBxl39rmWlSdg7\n\
i6heuA8CA6XNt/DC+Jqgr4AQd9H34AnTMBYf1eMpunlvFj6lBQ8fP7tV/7GtxXPO\n\
bJ2OkpKRaer2dS1ibKj+eOEcdXA8sIa7IfH+VqFiafGPxsRFxWZz0xEW836MeJ03\n\
5TleyDpBugkfkF9l+KfLvATCUIZVB3yHq/UHXkmyvAEEX0CwZsplTQqFP6LwsXQA\n\
AQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

pub(super) const OTHER_RSA_PRIVATE_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDZTgeK1b/z7ric\n\
MVb+jtlYeUOb79ZU5FaB541Wx8zTaq77CkMXD9iLiWyaZzwDL+FUwRs7OCdyxFjX\n\
iqwV65Sj58X6GxqQtLjJn3J6L7jF4Z6l8f9wMx1l0mhesxX2TVYj3CB34Z1wYhzU\n\
X//+ZGRgTzD8wXkVTYYiP8q25GjNfpnCwKusICZEASjqvOwLrDlEe2YTP+jpBjxO\n\
4ZuOK9NZB5lmAxnsRlHPIXf+a50bqyoetFZsGIdoplGjrifUus9AmCgHrEdfoUTX\n\
xIR6+TqeVkxGHiYh4k9132IaeJ+YbH5OEdhWwp0+8K2j3y4+PKjxrVyKoizoB4Ya\n\
xVdEZZK/AgMBAAECggEAMvmMaGOC30hxEua6FwXQc2Ii23oT558Wsets6t38rN16\n\
RZZfLZJAhF8M1F2CJOc+7wBLkIU4L8JiatFzU8MK/7X3aZehEC/spxNZqdL2/6hQ\n\
7HGLr7i13TRR2mEdNkVm/wt8rFKG+Z1yUNliNj07lKIPBkOmUTp5zB/1wBhtg0KQ\n\
RroWqU7Bvd7yhIRU27DFLASRW1WQMX5VHVVBZvezOeLL4hjyWUUb89u+qS0Q54bd\n\
fqqbUpwmORE/D66bs6JyNrUTAwn4XpMvVixSi/AicTPD70beTnFWEWDyUudbMfkI\n\
l12mZG5BStkFQU89eJilzhmDWO7YQsaav75Mr4IRwQKBgQDwfsMDLXBC/PNB1QJv\n\
JmSk7GprC95pLVMUS2DnOsKu2+S8O0giZNkFq/sf07mIiOciNP91GmWt8mTLSSFy\n\
5WO75YZf7Kdjg6PGHA9VL0ZOCts4P/m7l5tSqTqFi/jW9d+beX/nlsaL1tvrA/SL\n\
+R/2EobEuFaRp5ycuaZtpm6xfwKBgQDnUIYU8WVcXnbDKsMy721ILl+9CxQ1Rc+0\n\
VErQg5VVc+K3QIOXaw+XvPHU93yiY4cb7Zn4fKDGxlYJuQfKzaaO62ms/oC3Up5O\n\
INl7hjxyaUOw9/ukbP4I5t7mGcpXb/MHTuzZD6MeEZfzmeN6Jk3KYVbgYjLxCneg\n\
A1gSZIs+wQKBgGNIAVubc3/ECuw/clzOXbgT/S6p3KxQ0L5NC/kJMfubvYbTdkj0\n\
lv8Xa3lNH4e09K4TcO438ofnzCJ70zoqZozYCSwqd0PGwWJ0jQPem0h2hN9o0cDW\n\
qoFqaUVebmDXafM2Kk5B2T87eNhBbsAmHUKpjUdCzkIdDrNIlOMpVQMjAoGAMRP7\n\
rtvc5rFAP36GNfto02TLeV+tZPQv8pHj4cPZXm0dEEaG5QyZHVfAc7Ai6I13cCyE\n\
e51tu17/iEaS6auiiDZYkJTbGIpV/juoCTZdAuVksFqdMLDTYW4iou2b6dtd1BIh\n\
3JgdwtZ2x//BrPwNi0AF38vWBSB0ayXqfNSKWsECgYAgPk4990GC18LAwW82+MPQ\n\
VjuchkrlMQPX9OMYGzad/0kQxlzeyqeUlrhSF02FLiNV8ztN5/CQNoPobEUpzkai\n\
nQBRDbftL9zuiKGBd4PXXNTXyHskyafzHlYeROT4juxqrTAdqVaqHSeehYNWZ/1D\n\
PDIpv4rFR1bnpncfQCWNOw==\n\
-----END PRIVATE KEY-----\n\
";

pub(super) const ED25519_PRIVATE_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIAsq2kwPtsnUXsFdloFwvcmpYpwWIyZu+A38gZnutUQQ\n\
-----END PRIVATE KEY-----\n\
";

pub(super) const ED25519_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEA+8ocsjjKpHly6uvdCdLGdRkXpcTZBniAhc0UtmVS3W8=\n\
-----END PUBLIC KEY-----\n\
";
