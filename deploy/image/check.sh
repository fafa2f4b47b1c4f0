#!/usr/bin/env bash
# What can be checked of the container image without a container engine (there is none
# on the machines that run the tests): that the Dockerfile's build command, run here as it
# is written, makes a binary whose every shared library the runtime stage provides — from
# the packages it installs or from the packages every Debian slim image has (the essential
# and required ones and what they depend on) — and that the Kubernetes manifests run the image the documented build makes.
# The image build itself (docker build) is not exercised here.
set -euo pipefail
cd "$(dirname "$0")/../.."
dockerfile=Dockerfile
fail() { echo "deploy/image/check.sh: $*" >&2; exit 1; }

# 1. The build stage's command, exactly.
build=$(grep -E '^RUN cargo build ' "$dockerfile" | sed -E 's/^RUN //; s/ *(&&.*|\\)$//')
[ -n "$build" ] || fail "no 'RUN cargo build' line in the Dockerfile"
echo "image: building as the Dockerfile does: $build"
bash -c "$build"
binary=${CARGO_TARGET_DIR:-target}/release/outboxd
[ -x "$binary" ] || fail "$build made no $binary"

# 2. The runtime stage's packages: the line after RUNTIME_PACKAGES.
runtime=$(sed -n '/RUNTIME_PACKAGES/,/rm -rf/p' "$dockerfile" |
    grep -oE 'install -y --no-install-recommends [a-z0-9 .+-]+' |
    sed 's/install -y --no-install-recommends //')
[ -n "$runtime" ] || fail "no runtime packages found after RUNTIME_PACKAGES"
# What every Debian slim image has: the essential and required packages (debootstrap's
# minbase) and everything they depend on, as this Debian installs them.
required=$(dpkg-query -W -f='${Package}\t${Priority}\t${Essential}\t${Pre-Depends}, ${Depends}\n' | python3 -c '
import re, sys
deps, todo = {}, []
for line in sys.stdin:
    name, priority, essential, depends = line.rstrip("\n").split("\t")
    deps[name] = [re.split(r"[ :(]", alt.strip())[0] for d in depends.split(",") if d.strip() for alt in d.split("|")[:1]]
    if priority == "required" or essential == "yes":
        todo.append(name)
seen = set()
while todo:
    n = todo.pop()
    if n in seen or n not in deps:
        continue
    seen.add(n)
    todo.extend(deps[n])
print("\n".join(sorted(seen)))
')

# 3. Every shared library the binary needs, by the Debian package that ships it.
missing=()
while read -r lib path; do
    pkg=$(dpkg -S "$(realpath "$path")" 2>/dev/null | head -1 | cut -d: -f1) ||
        pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1) || true
    [ -n "$pkg" ] || fail "$lib ($path): no Debian package ships it"
    if grep -qxF "$pkg" <<<"$required" || grep -qw -- "$pkg" <<<"$runtime"; then
        echo "image: $lib from $pkg: provided"
    else
        missing+=("$lib ($pkg)")
    fi
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
[ ${#missing[@]} -eq 0 ] || fail "the runtime stage lacks: ${missing[*]} — add the packages to its apt-get install"

# 4. The manifests run the image the documented build makes, as a non-root user.
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
tag="outboxd:$version"
grep -q "docker build -t $tag \." "$dockerfile" || fail "the Dockerfile's build command does not tag $tag"
grep -q "docker build -t $tag \." deploy/README.md || fail "deploy/README.md does not show 'docker build -t $tag .'"
image=$(grep -m1 -E '^\s+image:' deploy/kubernetes/deployment.yaml | awk '{print $2}')
[ "$image" = "$tag" ] || fail "deploy/kubernetes/deployment.yaml runs $image, the build makes $tag"
grep -qE '^USER [1-9][0-9]*' "$dockerfile" || fail "the runtime stage must not run as root"
grep -q '^ENTRYPOINT \["/usr/local/bin/outboxd"\]' "$dockerfile" || fail "outboxd must be the entrypoint"
echo "image: OK ($tag; the image build itself is not exercised here)"
