#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft: broker + controller in one JVM) for
# development and tests. No Docker: the broker's jars come from Maven Central
# (see pom.xml next to this script) and run straight from a cache directory.
#
# Usage: infra/kafka/kafka.sh fetch|up [--secure]|down|status|credentials|acls
#                             |add-principal NAME ROLE|rotate NAME
#
#   fetch   copy the broker classpath into $SHAPING_CACHE/kafka-3.9.1/lib (once)
#   up      fetch if needed, format the KRaft storage if needed, start the broker
#           in the background and wait until it answers; a no-op if it already runs.
#           With --secure (or SHAPING_KAFKA_SECURE=1): the secured mode below
#   down    SIGTERM, wait up to 30 s, then SIGKILL; removes the pid file
#   status  exit 0 and say so if it runs, exit 3 if not
#
# Secured mode (docs/security.md). On the first secured `up` of a data dir the script creates,
# in $SHAPING_KAFKA_DATA/secrets (mode 0700, every file 0600):
#   - a local CA (ca.key, ca.crt) and the broker's key and certificate (CN=shaping-broker,
#     subjectAltName IP:127.0.0.1 and DNS:localhost), as a PKCS12 keystore (broker.p12) and
#     a PKCS12 truststore holding the CA (truststore.p12), their password in store.password;
#   - a random password per principal (<name>.password) and an env file per principal
#     (<name>.env: SHAPING_BOOTSTRAP and the SHAPING_KAFKA_* settings of KafkaConnection);
#   - principals: `name role` per line, the roles of services/adapters/acls.py.
# The principals' SCRAM-SHA-512 credentials go into the KRaft bootstrap metadata when the
# storage is formatted. The broker then listens with
#   SASL_SSL    on 127.0.0.1:$SHAPING_KAFKA_PORT: clients, SCRAM-SHA-512 only; also the
#               inter-broker listener, where the broker logs in as admin
#   SSL         on 127.0.0.1:$SHAPING_KAFKA_CONTROLLER_PORT: the KRaft controller, with client
#               certificates required (only a holder of a key signed by the CA gets in)
# and authorises with KRaft's StandardAuthorizer: super users User:admin and the broker's
# certificate (User:CN=shaping-broker), nobody else without an ACL. Every secured `up`
# applies the ACLs of every principal (python -m shaping.services.adapters.acls) and creates
# the ingress topic of every rig and operator that lacks one (rigs and operators write only
# there; the ingress gate, principal `ingress`, forwards to events and commands). A data dir
# once secured stays secured (`up` finds its secrets and asks for nothing);
# SHAPING_KAFKA_SECURE=0 on it is an error.
#
#   credentials            print the principals and how to use their credentials
#   acls                   re-apply the ACLs (and SCRAM credentials of principals added to
#                          SHAPING_KAFKA_RIGS / SHAPING_KAFKA_OPERATORS since); broker running
#   add-principal NAME ROLE  a new principal (role rig, operator, processor, projector or
#                          ingress): password, env file, SCRAM credentials and ACLs, and for a
#                          rig or an operator its ingress topic (<prefix>.rig.NAME or
#                          <prefix>.operator.NAME, laid out like events); broker running
#   rotate NAME            a new password for NAME, set on the broker, then written to its
#                          file (after rotating admin, restart the broker: `down` then `up`)
#
# Environment:
#   SHAPING_KAFKA_PORT             client listener port            (default 9092)
#   SHAPING_KAFKA_CONTROLLER_PORT  KRaft controller listener port  (default 9093)
#   SHAPING_KAFKA_DATA             data dir: log.dirs, server.properties, kafka.log,
#                                  kafka.pid, secrets/      (default $REPO/.cache/kafka-data)
#   SHAPING_CACHE                  where the jars go        (default $REPO/.cache)
#   SHAPING_KAFKA_START_TIMEOUT    seconds `up` waits for the broker (default 60)
#   SHAPING_KAFKA_HEAP             JVM -Xmx                 (default 512m)
#   SHAPING_OWNER_PID              optional: stop the broker when this process
#                                  exits (the test fixtures use it as a safety net)
#   PYTHON                         interpreter with kafka-python (default $REPO/.venv/bin/python);
#                                  the secured mode needs Shaping installed in it too
# Secured mode only:
#   SHAPING_KAFKA_SECURE           1: secured mode (same as `up --secure`); 0: refuse a secured
#                                  data dir; unset: as the data dir was set up
#   SHAPING_KAFKA_RIGS             rig principals        (default "rig-1 rig-2"; space-separated)
#   SHAPING_KAFKA_OPERATORS        operator principals   (default "operator")
#   SHAPING_TOPIC_PREFIX           the topics the ACLs name        (default shaping)
#   SHAPING_PROCESSOR_ID           the processor's group and changelog prefix
#                                  (default shaping-processor)
#   SHAPING_PARTITIONS             partitions of a new ingress topic while the events topic does
#                                  not exist yet (default 4; else the events topic's count)
# A deployment brings its own certificates instead of the generated ones (all five, or none):
#   SHAPING_KAFKA_SSL_KEYSTORE                PKCS12 keystore: the broker's key and chain
#   SHAPING_KAFKA_SSL_KEYSTORE_PASSWORD_FILE  its password (a file, mode 0600)
#   SHAPING_KAFKA_SSL_TRUSTSTORE              PKCS12 truststore: the CA(s) of broker and clients
#   SHAPING_KAFKA_SSL_TRUSTSTORE_PASSWORD_FILE its password (a file, mode 0600)
#   SHAPING_KAFKA_SSL_CAFILE                  the CA as PEM, written into the clients' env files
#   SHAPING_KAFKA_BROKER_PRINCIPAL            the broker certificate's principal, a super user
#                                             (User:<subject DN as RFC 2253>, e.g.
#                                             User:CN=kafka-1.lab.example,O=Lab)
#
# Everything binds to 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

KAFKA_VERSION=3.9.1
CACHE="${SHAPING_CACHE:-$REPO/.cache}"
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
LIB="$KAFKA_HOME/lib"
LIB_MARKER="$KAFKA_HOME/.lib-complete"

PORT="${SHAPING_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SHAPING_KAFKA_CONTROLLER_PORT:-9093}"
DATA="${SHAPING_KAFKA_DATA:-$REPO/.cache/kafka-data}"
START_TIMEOUT="${SHAPING_KAFKA_START_TIMEOUT:-60}"
HEAP="${SHAPING_KAFKA_HEAP:-512m}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
LOG4J="$HERE/log4j.properties"

PROPS="$DATA/server.properties"
LOGFILE="$DATA/kafka.log"
PIDFILE="$DATA/kafka.pid"
WATCH_PIDFILE="$DATA/kafka-watchdog.pid"
LOG_DIRS="$DATA/logs"
SECRETS="$DATA/secrets"
PRINCIPALS="$SECRETS/principals"
# Principals whose SCRAM credentials the cluster has (written at format time, then by `acls`).
SCRAM_KNOWN="$SECRETS/scram-known"
MECHANISM=SCRAM-SHA-512
SCRAM_ITERATIONS=8192
BROKER_DN="CN=shaping-broker"
TOPIC_PREFIX="${SHAPING_TOPIC_PREFIX:-shaping}"
PROCESSOR_ID="${SHAPING_PROCESSOR_ID:-shaping-processor}"
SECURE=0

say() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: ERROR: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed ($2)"; }

# --- fetch -------------------------------------------------------------------

fetch() {
    if [[ -f "$LIB_MARKER" && -d "$LIB" ]]; then
        return 0
    fi
    need mvn "apt-get install maven"
    need java "apt-get install openjdk-17-jre-headless"
    mkdir -p "$KAFKA_HOME"
    # Serialise concurrent fetches (e.g. two test sessions starting at once).
    exec 8>"$KAFKA_HOME/.fetch.lock"
    flock 8
    if [[ -f "$LIB_MARKER" && -d "$LIB" ]]; then
        exec 8>&-
        return 0
    fi
    say "fetching the Kafka $KAFKA_VERSION broker classpath with Maven into $LIB"
    rm -rf "$LIB" "$LIB.partial"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" \
        dependency:copy-dependencies \
        -DincludeScope=runtime \
        -DoutputDirectory="$LIB.partial" 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' \
        || die "Maven could not copy the Kafka jars (is Maven Central reachable?)"
    ls "$LIB.partial"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
        || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing in $LIB.partial"
    mv "$LIB.partial" "$LIB"
    touch "$LIB_MARKER"
    exec 8>&-
    say "fetched $(find "$LIB" -name '*.jar' | wc -l) jars ($(du -sh "$LIB" | cut -f1))"
}

# --- helpers ---------------------------------------------------------------------

read_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" ]] || return 1
    printf '%s' "$pid"
}

# True if $1 is alive and really is our broker (guards against a recycled pid).
is_our_broker() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $PROPS"
}

running_pid() {
    local pid
    pid="$(read_pid)" || return 1
    is_our_broker "$pid" || return 1
    printf '%s' "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Ask the broker for its metadata with kafka-python. Retries until the broker
# lists itself as an (unfenced) broker and answers a topic listing. In the secured
# mode it logs in as admin (SASL_SSL, the CA checked): an answer proves TLS, SCRAM and
# the authorizer work.
#   probe <timeout-seconds> [pid-that-must-stay-alive]
probe() {
    local cafile="" password_file=""
    if ((SECURE)); then
        cafile="$CA_PEM"
        password_file="$SECRETS/admin.password"
    fi
    "$PYTHON" - "127.0.0.1:$PORT" "$1" "${2:-0}" "$cafile" "$password_file" "$MECHANISM" <<'PY'
import logging
import os
import sys
import time

logging.disable(logging.CRITICAL)
from kafka import KafkaAdminClient  # noqa: E402

bootstrap, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
cafile, password_file, mechanism = sys.argv[4], sys.argv[5], sys.argv[6]
security = {}
if cafile:
    with open(password_file, encoding="utf-8") as f:
        security = {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": "admin",
            "sasl_plain_password": f.read().strip(),
            "ssl_cafile": cafile,
        }
deadline = time.monotonic() + timeout
last = "no answer yet"
while time.monotonic() < deadline:
    if pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"broker process {pid} exited", file=sys.stderr)
            sys.exit(2)
    admin = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="shaping-kafka-sh-probe",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
            **security,
        )
        if admin.describe_cluster().get("brokers"):
            admin.list_topics()
            sys.exit(0)
        last = "broker registered no brokers yet"
    except Exception as exc:  # the broker is still starting
        last = f"{type(exc).__name__}: {exc}"
    finally:
        if admin is not None:
            try:
                admin.close()
            except Exception:
                pass
    time.sleep(0.5)
print(f"no answer from {bootstrap} within {timeout:.0f} s ({last})", file=sys.stderr)
sys.exit(1)
PY
}

new_cluster_id() {
    # A Kafka Uuid in base64url without padding: 16 random bytes -> 22 chars.
    # Avoid a leading '-' (it would look like a command-line option).
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* && ${#id} -eq 22 ]] && break
    done
    printf '%s' "$id"
}

write_properties() {
    local listeners
    if ((SECURE)); then
        listeners="$(secure_listeners)"
    else
        listeners="listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    fi
    # umask 077: in the secured mode the file holds the stores' and the admin's passwords.
    (
        umask 077
        cat >"$PROPS.partial" <<EOF
# Written by infra/kafka/kafka.sh on every 'up'; edits are overwritten.
# Single-node KRaft cluster: this JVM is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
$listeners

log.dirs=$LOG_DIRS
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true

offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0

# The log cleaner must run for compacted topics (it does by default; be explicit).
log.cleaner.enable=true
EOF
    )
    mv "$PROPS.partial" "$PROPS"
}

# --- secured mode ------------------------------------------------------------------

truthy() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        0 | false | no | off | "") return 1 ;;
        *) die "expected 1 or 0, not '$1'" ;;
    esac
}

# resolve_mode [REQUEST]: set SECURE from the request (--secure, SHAPING_KAFKA_SECURE) and
# from the data dir (a secured one stays secured).
resolve_mode() {
    local asked="${1:-${SHAPING_KAFKA_SECURE:-}}"
    if [[ -f "$SECRETS/admin.password" ]]; then
        if [[ -n "$asked" ]] && ! truthy "$asked"; then
            die "$DATA was set up secured (secrets in $SECRETS); it does not start without security. Use another SHAPING_KAFKA_DATA for a plaintext broker"
        fi
        SECURE=1
    elif [[ -n "$asked" ]] && truthy "$asked"; then
        if [[ -f "$LOG_DIRS/meta.properties" ]]; then
            die "$DATA was formatted without security (its metadata holds no SCRAM credentials); remove it or choose another SHAPING_KAFKA_DATA for a secured broker"
        fi
        SECURE=1
    else
        SECURE=0
    fi
    if ((SECURE)); then
        store_paths
    fi
}

# The stores, their passwords, the CA for clients and the broker's principal: the
# deployment's (SHAPING_KAFKA_SSL_*) or the generated ones.
store_paths() {
    if [[ -n "${SHAPING_KAFKA_SSL_KEYSTORE:-}" ]]; then
        KEYSTORE="$SHAPING_KAFKA_SSL_KEYSTORE"
        KEYSTORE_PASSWORD_FILE="${SHAPING_KAFKA_SSL_KEYSTORE_PASSWORD_FILE:-}"
        TRUSTSTORE="${SHAPING_KAFKA_SSL_TRUSTSTORE:-}"
        TRUSTSTORE_PASSWORD_FILE="${SHAPING_KAFKA_SSL_TRUSTSTORE_PASSWORD_FILE:-}"
        CA_PEM="${SHAPING_KAFKA_SSL_CAFILE:-}"
        BROKER_PRINCIPAL="${SHAPING_KAFKA_BROKER_PRINCIPAL:-}"
        local name
        for name in KEYSTORE_PASSWORD_FILE TRUSTSTORE TRUSTSTORE_PASSWORD_FILE CA_PEM BROKER_PRINCIPAL; do
            [[ -n "${!name}" ]] || die "SHAPING_KAFKA_SSL_KEYSTORE is set, so the other SHAPING_KAFKA_SSL_* and SHAPING_KAFKA_BROKER_PRINCIPAL must be set too (see the header of $0)"
        done
        [[ "$BROKER_PRINCIPAL" == User:?* ]] \
            || die "SHAPING_KAFKA_BROKER_PRINCIPAL must look like User:<subject DN>, not '$BROKER_PRINCIPAL'"
        for name in KEYSTORE KEYSTORE_PASSWORD_FILE TRUSTSTORE TRUSTSTORE_PASSWORD_FILE CA_PEM; do
            [[ -r "${!name}" ]] || die "cannot read ${!name} (given by SHAPING_KAFKA_SSL_*)"
        done
        private_file "$KEYSTORE_PASSWORD_FILE"
        private_file "$TRUSTSTORE_PASSWORD_FILE"
        OWN_CERTS=0
    else
        KEYSTORE="$SECRETS/broker.p12"
        KEYSTORE_PASSWORD_FILE="$SECRETS/store.password"
        TRUSTSTORE="$SECRETS/truststore.p12"
        TRUSTSTORE_PASSWORD_FILE="$SECRETS/store.password"
        CA_PEM="$SECRETS/ca.crt"
        BROKER_PRINCIPAL="User:$BROKER_DN"
        OWN_CERTS=1
    fi
}

# private_file FILE: refuse a file that others may read.
private_file() {
    local mode
    mode="$(stat -c '%a' "$1")"
    [[ "$mode" =~ ^[0-7]?[0-7]00$ ]] || die "$1 is readable by others (mode $mode); chmod 600 $1"
}

new_secret() { openssl rand -hex 24; }

# write_secret FILE VALUE: a 0600 file holding VALUE, replaced atomically.
write_secret() {
    (
        umask 077
        printf '%s\n' "$2" >"$1.partial"
    )
    mv "$1.partial" "$1"
}

read_secret() { tr -d '\n' <"$1"; }

# The local CA and the broker's certificate, once per data dir.
generate_certs() {
    ((OWN_CERTS)) || return 0
    [[ -s "$KEYSTORE" && -s "$TRUSTSTORE" && -s "$CA_PEM" ]] && return 0
    need keytool "apt-get install openjdk-17-jre-headless"
    say "creating a local CA and the broker's certificate in $SECRETS"
    local work="$SECRETS/.certs.partial"
    rm -rf "$work"
    mkdir -m 700 "$work"
    (
        umask 077
        cd "$work"
        exec 2>>errors
        new_secret >store.password
        openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 3650 \
            -subj "/CN=Shaping local Kafka CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.crt
        openssl req -new -newkey rsa:3072 -sha256 -nodes -subj "/$BROKER_DN" \
            -keyout broker.key -out broker.csr
        printf '%s\n' \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth,clientAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key \
            -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 -extfile broker.ext \
            -out broker.crt
        # The keystore: the broker's key, its certificate and the CA (the chain).
        openssl pkcs12 -export -name broker -inkey broker.key -in broker.crt -certfile ca.crt \
            -passout file:store.password -out broker.p12
        # The truststore: the CA as a trusted entry (keytool marks it so for Java).
        keytool -importcert -noprompt -alias shaping-ca -file ca.crt -storetype PKCS12 \
            -keystore truststore.p12 -storepass:file store.password >&2
        rm -f broker.csr broker.ext errors
        chmod 600 ./*
    ) || { cat "$work/errors" >&2; die "creating the certificates failed (see above)"; }
    mv "$work"/* "$SECRETS"/
    rmdir "$work"
}

# add_principal_line NAME ROLE: record a principal; an existing one keeps its role.
add_principal_line() {
    local name="$1" role="$2" known
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] \
        || die "principal name '$name' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    case "$role" in
        admin | processor | projector | operator | rig | ingress | alerts | notifier) ;;
        *) die "unknown role '$role' for '$name' (rig, operator, processor, projector, ingress, alerts or notifier)" ;;
    esac
    known="$(awk -v n="$name" '$1 == n { print $2 }' "$PRINCIPALS")"
    if [[ -z "$known" ]]; then
        printf '%s %s\n' "$name" "$role" >>"$PRINCIPALS"
    elif [[ "$known" != "$role" ]]; then
        die "principal '$name' has the role '$known' in $PRINCIPALS, not '$role'"
    fi
}

# principals: "name role" lines of the principals file.
principals() { awk '$1 !~ /^#/ && NF == 2 { print $1, $2 }' "$PRINCIPALS"; }

write_env_file() {
    local name="$1" role="$2" file="$SECRETS/$1.env"
    (
        umask 077
        cat >"$file.partial" <<EOF
# Kafka credentials of the principal '$name' (role $role), written by infra/kafka/kafka.sh.
# Use them in a shell with:  set -a; . '$file'; set +a
SHAPING_BOOTSTRAP='127.0.0.1:$PORT'
SHAPING_KAFKA_SECURITY_PROTOCOL='SASL_SSL'
SHAPING_KAFKA_SASL_MECHANISM='$MECHANISM'
SHAPING_KAFKA_SASL_USERNAME='$name'
SHAPING_KAFKA_SASL_PASSWORD_FILE='$SECRETS/$name.password'
SHAPING_KAFKA_SSL_CAFILE='$CA_PEM'
EOF
    )
    mv "$file.partial" "$file"
}

# The principals: the file's, plus the fixed ones and SHAPING_KAFKA_RIGS / _OPERATORS. Each
# gets a password (once) and an env file (rewritten: the port may have changed).
ensure_principals() {
    local name role
    (
        umask 077
        touch "$PRINCIPALS"
    )
    add_principal_line admin admin
    add_principal_line processor processor
    add_principal_line projector projector
    add_principal_line ingress ingress
    add_principal_line alerts alerts
    add_principal_line notifier notifier
    # The trainers' web page speaks as an operator, for its logged-in users (web/<user>).
    add_principal_line web operator
    for name in ${SHAPING_KAFKA_OPERATORS-operator}; do add_principal_line "$name" operator; done
    for name in ${SHAPING_KAFKA_RIGS-rig-1 rig-2}; do add_principal_line "$name" rig; done
    while read -r name role; do
        [[ -s "$SECRETS/$name.password" ]] || write_secret "$SECRETS/$name.password" "$(new_secret)"
        write_env_file "$name" "$role"
    done < <(principals)
}

# The listener lines of server.properties in the secured mode.
secure_listeners() {
    local store_pw trust_pw admin_pw
    store_pw="$(read_secret "$KEYSTORE_PASSWORD_FILE")"
    trust_pw="$(read_secret "$TRUSTSTORE_PASSWORD_FILE")"
    admin_pw="$(read_secret "$SECRETS/admin.password")"
    cat <<EOF
# Secured mode (docs/security.md): clients and the inter-broker link on SASL_SSL with
# SCRAM-SHA-512 (the broker logs in as admin); the controller on SSL with client certificates.
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
sasl.enabled.mechanisms=$MECHANISM
sasl.mechanism.inter.broker.protocol=$MECHANISM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$KEYSTORE
ssl.keystore.password=$store_pw
ssl.truststore.type=PKCS12
ssl.truststore.location=$TRUSTSTORE
ssl.truststore.password=$trust_pw
ssl.endpoint.identification.algorithm=https
ssl.enabled.protocols=TLSv1.3,TLSv1.2

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;$BROKER_PRINCIPAL
allow.everyone.if.no.acl.found=false
EOF
}

# Secrets before a secured start: certificates, principals, passwords, env files.
prepare_secure() {
    need openssl "apt-get install openssl"
    # The log dirs hold the records and the bootstrap metadata (salted SCRAM credentials):
    # other local users must not read them behind the authorizer's back.
    chmod 700 "$DATA"
    mkdir -p "$SECRETS"
    chmod 700 "$SECRETS"
    generate_certs
    ensure_principals
}

# format_storage CLUSTER_ID: the KRaft storage; in the secured mode with every principal's
# SCRAM credentials. The arguments go through a 0600 java @argfile, so no password shows in
# the process list.
format_storage() {
    if ! ((SECURE)); then
        java -cp "$LIB/*" -Dlog4j.configuration="file:$LOG4J" \
            kafka.tools.StorageTool format -t "$1" -c "$PROPS" >>"$LOGFILE" 2>&1
        return
    fi
    local argfile="$SECRETS/.format-args" name role rc=0
    (
        umask 077
        printf '%s\n' kafka.tools.StorageTool format -t "$1" -c "$PROPS"
        while read -r name role; do
            printf -- '--add-scram\n%s=[name=%s,iterations=%s,password=%s]\n' \
                "$MECHANISM" "$name" "$SCRAM_ITERATIONS" "$(read_secret "$SECRETS/$name.password")"
        done < <(principals)
    ) >"$argfile"
    chmod 600 "$argfile"
    java -cp "$LIB/*" -Dlog4j.configuration="file:$LOG4J" "@$argfile" >>"$LOGFILE" 2>&1 || rc=$?
    rm -f "$argfile"
    ((rc == 0)) || return "$rc"
    principals | cut -d' ' -f1 >"$SCRAM_KNOWN"
    chmod 600 "$SCRAM_KNOWN"
}

# SCRAM credentials of the principals added since the format, then every principal's ACLs.
apply_acls() {
    local pending=() name role
    (
        umask 077
        touch "$SCRAM_KNOWN"
    )
    while read -r name role; do
        grep -qxF -- "$name" "$SCRAM_KNOWN" || pending+=("$name")
    done < <(principals)
    "$PYTHON" -m shaping.services.adapters.acls --secrets "$SECRETS" --cafile "$CA_PEM" \
        --bootstrap "127.0.0.1:$PORT" --prefix "$TOPIC_PREFIX" --processor-id "$PROCESSOR_ID" \
        --partitions "${SHAPING_PARTITIONS:-4}" \
        --upsert "${pending[@]}" || die "applying the ACLs failed"
    if ((${#pending[@]})); then
        printf '%s\n' "${pending[@]}" >>"$SCRAM_KNOWN"
    fi
}

print_credentials() {
    local name role
    say "secured: SASL_SSL with $MECHANISM on 127.0.0.1:$PORT; CA $CA_PEM"
    say "credentials (files mode 0600) in $SECRETS:"
    while read -r name role; do
        printf 'kafka:   %-12s %-10s %s\n' "$name" "$role" "$SECRETS/$name.env"
    done < <(principals)
    say "to act as a principal, export its settings (SHAPING_BOOTSTRAP, SHAPING_KAFKA_SECURITY_PROTOCOL,"
    say "SHAPING_KAFKA_SASL_MECHANISM, SHAPING_KAFKA_SASL_USERNAME, SHAPING_KAFKA_SASL_PASSWORD_FILE,"
    say "SHAPING_KAFKA_SSL_CAFILE), for example:  set -a; . '$SECRETS/operator.env'; set +a"
}

# The secured subcommands need the broker of a secured data dir running.
need_running_secure() {
    [[ -f "$SECRETS/admin.password" ]] || die "$DATA is not a secured data dir (start it with: $0 up --secure)"
    resolve_mode 1
    running_pid >/dev/null || die "the broker of $DATA is not running (start it with: $0 up --secure)"
    [[ -x "$PYTHON" ]] || die "no python at $PYTHON (set PYTHON=... to an interpreter with Shaping)"
}

credentials() {
    [[ -f "$SECRETS/admin.password" ]] || die "$DATA is not a secured data dir (start it with: $0 up --secure)"
    resolve_mode 1
    print_credentials
}

acls() {
    need_running_secure
    ensure_principals
    apply_acls
}

add_principal() {
    [[ $# -eq 2 ]] || die "usage: $0 add-principal NAME ROLE (role rig, operator, processor, projector, ingress, alerts or notifier)"
    [[ "$2" != admin ]] || die "there is one admin"
    need_running_secure
    add_principal_line "$1" "$2"
    ensure_principals
    apply_acls
    say "principal '$1' ($2): $SECRETS/$1.env"
}

# rotate NAME: a new password, set on the broker with the admin's credentials, then kept.
rotate() {
    [[ $# -eq 1 ]] || die "usage: $0 rotate NAME"
    need_running_secure
    local name="$1" role
    role="$(awk -v n="$name" '$1 == n { print $2 }' "$PRINCIPALS")"
    [[ -n "$role" ]] || die "no principal '$name' in $PRINCIPALS"
    write_secret "$SECRETS/$name.password.new" "$(new_secret)"
    "$PYTHON" -m shaping.services.adapters.acls --secrets "$SECRETS" --cafile "$CA_PEM" \
        --bootstrap "127.0.0.1:$PORT" --prefix "$TOPIC_PREFIX" --processor-id "$PROCESSOR_ID" \
        --partitions "${SHAPING_PARTITIONS:-4}" --rotate "$name" || { rm -f "$SECRETS/$name.password.new"; die "rotating '$name' failed"; }
    if [[ "$name" == admin ]]; then
        write_properties
        say "the admin's password changed; restart the broker ($0 down; $0 up) so its own login uses it"
    fi
    say "new password of '$name' in $SECRETS/$name.password; clients using it need a restart"
}

# --- subcommands -------------------------------------------------------------------

up() {
    local pid request=""
    while (($#)); do
        case "$1" in
            --secure) request=1 ;;
            *) die "unknown option for up: $1 (usage: $0 up [--secure])" ;;
        esac
        shift
    done
    resolve_mode "$request"
    if pid="$(running_pid)"; then
        say "already running (pid $pid) on 127.0.0.1:$PORT"
        ((SECURE)) && print_credentials
        return 0
    fi
    if port_open "$PORT"; then
        if [[ -x "$PYTHON" ]] && { ! ((SECURE)) || [[ -s "$CA_PEM" ]]; } && probe 5 >/dev/null 2>&1; then
            say "a Kafka broker already answers on 127.0.0.1:$PORT (not started from $DATA); leaving it alone"
            return 0
        fi
        die "port 127.0.0.1:$PORT is in use by something that is not a Kafka broker (or not one this data dir's credentials open)"
    fi
    port_open "$CONTROLLER_PORT" && die "controller port 127.0.0.1:$CONTROLLER_PORT is already in use"
    [[ -x "$PYTHON" ]] || die "no python at $PYTHON (set PYTHON=... to an interpreter with kafka-python)"
    need java "apt-get install openjdk-17-jre-headless"
    if ((SECURE)); then
        "$PYTHON" -c 'import shaping.services.adapters.acls' 2>/dev/null \
            || die "the secured mode needs Shaping installed in $PYTHON (make install)"
    fi

    fetch
    mkdir -p "$DATA" "$LOG_DIRS"
    ((SECURE)) && prepare_secure
    write_properties
    rm -f "$PIDFILE"

    if [[ ! -f "$LOG_DIRS/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(new_cluster_id)"
        say "formatting KRaft storage in $LOG_DIRS (cluster id $cluster_id)"
        format_storage "$cluster_id" \
            || { tail -n 30 "$LOGFILE" >&2; die "formatting the KRaft storage failed"; }
    fi

    say "starting broker on 127.0.0.1:$PORT (controller 127.0.0.1:$CONTROLLER_PORT, data $DATA)"
    local started=$SECONDS
    {
        printf '\n===== %s kafka.sh up (port %s) =====\n' "$(date -Is)" "$PORT"
    } >>"$LOGFILE"
    # setsid: own session, so the broker survives the shell that started it and
    # is not hit by a terminal's Ctrl-C. All fds are redirected so callers that
    # capture our output (subprocess.run) do not wait for the broker.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
        java -Xmx"$HEAP" -Xms128m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -cp "$LIB/*" -Dlog4j.configuration="file:$LOG4J" \
        kafka.Kafka "$PROPS" </dev/null >>"$LOGFILE" 2>&1 &

    # Wait for the pid file written by the child.
    local i
    for i in $(seq 1 50); do
        [[ -s "$PIDFILE" ]] && break
        sleep 0.1
    done
    pid="$(read_pid)" || die "the broker did not record its pid in $PIDFILE"

    if ! probe "$START_TIMEOUT" "$pid"; then
        echo "----- last lines of $LOGFILE -----" >&2
        tail -n 40 "$LOGFILE" >&2 || true
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$PIDFILE"
        die "the broker did not come up on 127.0.0.1:$PORT"
    fi

    if [[ -n "${SHAPING_OWNER_PID:-}" ]]; then
        start_watchdog "$pid" "$SHAPING_OWNER_PID"
    fi
    say "up (pid $pid) on 127.0.0.1:$PORT after $((SECONDS - started)) s"
    if ((SECURE)); then
        if ! apply_acls; then
            down
            die "the broker is stopped again: its ACLs could not be applied"
        fi
        print_credentials
    fi
}


source "$(dirname "${BASH_SOURCE[0]}")/../lib/watchdog.sh"

down() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        stop_watchdog
        say "not running (data $DATA)"
        return 0
    fi
    stop_watchdog
    say "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still alive after 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if port_open "$PORT"; then
            say "running (pid $pid) on 127.0.0.1:$PORT, controller 127.0.0.1:$CONTROLLER_PORT, data $DATA"
        else
            say "process $pid is alive but 127.0.0.1:$PORT does not accept connections (starting or stuck?); log: $LOGFILE"
        fi
        return 0
    fi
    say "not running (data $DATA)"
    return 3
}

command="${1:-}"
(($#)) && shift
case "$command" in
    fetch) fetch; say "jars in $LIB" ;;
    up) up "$@" ;;
    down) down ;;
    status) status ;;
    credentials) credentials ;;
    acls) acls ;;
    add-principal) add_principal "$@" ;;
    rotate) rotate "$@" ;;
    *)
        echo "usage: $0 fetch|up [--secure]|down|status|credentials|acls|add-principal NAME ROLE|rotate NAME" >&2
        exit 2
        ;;
esac
