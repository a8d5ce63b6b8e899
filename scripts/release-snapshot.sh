#!/usr/bin/env bash
# Builds a snapshot release with GoReleaser into dist/ and checks what it
# produced: archives with the binary, completions, man pages, README and
# license for every target, and deb/rpm packages that install them in the
# standard places. Installs GoReleaser (pinned) with `go install` if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
GORELEASER_VERSION=v2.16.0   # newest that builds with Go 1.26 from the module proxy (2.17 needs a module it refuses)
scripts/install-deps.sh
export PATH="$(go env GOPATH)/bin:$PATH"
have=$(goreleaser --version 2>/dev/null || true)
if ! grep -q "${GORELEASER_VERSION#v}" <<<"$have"; then
  echo "release-snapshot: installing goreleaser $GORELEASER_VERSION" >&2
  GOFLAGS=-buildvcs=false go install "github.com/goreleaser/goreleaser/v2@$GORELEASER_VERSION"
fi
goreleaser check
goreleaser release --snapshot --clean --parallelism 2 >&2

fail=0
check() { if ! grep -qE "$2" <<<"$1"; then echo "release-snapshot: $3 lacks $2" >&2; fail=1; fi; }
n=0
for a in dist/pushctl_*.tar.gz dist/pushctl_*.zip; do
  [[ -e "$a" ]] || continue
  n=$((n+1))
  if [[ "$a" == *.zip ]]; then list=$(unzip -Z1 "$a"); else list=$(tar -tzf "$a"); fi
  for want in '(^|/)pushctl(\.exe)?$' 'README\.md$' 'LICENSE$' 'completions/pushctl\.bash$' 'completions/pushctl\.zsh$' 'completions/pushctl\.fish$' 'completions/pushctl\.ps1$' 'docs/man/pushctl\.1$' 'docs/man/pushctl-serve\.1$'; do
    check "$list" "$want" "$a"
  done
done
[[ $n -eq 6 ]] || { echo "release-snapshot: want 6 archives, got $n" >&2; fail=1; }
deb=$(ls dist/*.deb); rpm=$(ls dist/*.rpm)
list=$(dpkg-deb -c "$deb")
for want in './usr/bin/pushctl$' 'bash-completion/completions/pushctl$' 'zsh/vendor-completions/_pushctl$' 'fish/vendor_completions.d/pushctl.fish$' 'man/man1/pushctl-serve.1' 'doc/pushctl/copyright$'; do
  check "$list" "$want" "$deb"
done
check "$(dpkg-deb -f "$deb" Depends)" 'libzmq5' "$deb (Depends)"
[[ -s "$rpm" ]] || { echo "release-snapshot: no rpm" >&2; fail=1; }
# The linux build has ZeroMQ and says its version; the others say they lack it.
bin=$(ls dist/linux-zmq_linux_amd64*/pushctl)
ver=$("$bin" version)   # captured: grep -q in a pipe would cut it short (pipefail)
grep -q 'libzmq:  4\.' <<<"$ver" || { echo "release-snapshot: linux build lacks libzmq" >&2; fail=1; }
grep -q 'snapshot' <<<"$ver" || { echo "release-snapshot: version not stamped" >&2; fail=1; }
exit $fail
