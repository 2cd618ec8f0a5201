# Everyday commands. CI runs .ci/run, which runs the same checks.
GO ?= go
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: build test lint bench fuzz run
build:
	$(GO) build -o bin/kms ./cmd/kms

test:
	$(GO) test -race ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(STATICCHECK) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./kms/ ./kms/ca/ ./mail/...

# Each fuzz target for a while. New interesting inputs stay in Go's cache
# ($(go env GOCACHE)/fuzz); a failing one lands in the package's testdata/fuzz,
# which every go test runs. Copy the cache's inputs there to keep them.
# A target that ends in "context deadline exceeded" with no new file in
# testdata/fuzz found nothing: that is a race in Go's fuzzing coordinator
# at the -fuzztime deadline (golang/go#75804, reported fixed in Go 1.27), seen here
# with go1.26.8 on a 10-minute run of FuzzParseCMS; run it again.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseDuration -fuzztime 60s ./policy/
	$(GO) test -run '^$$' -fuzz FuzzNormalize -fuzztime 60s ./enroll/
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 60s ./config/
	$(GO) test -run '^$$' -fuzz FuzzServerReplies -fuzztime 60s ./mail/smtpclient/
	$(GO) test -run '^$$' -fuzz FuzzCertificateFields -fuzztime 60s ./internal/certder/
	for t in FuzzParseRequest FuzzVerify FuzzParseCMS FuzzParseCSR FuzzSignedData; do \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime 60s ./mail/smime/ || exit 1; \
	done

run:
	$(GO) run ./cmd/kms serve
