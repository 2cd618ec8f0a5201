package signrate

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"
)

func TestMeasure(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rate, err := Measure(context.Background(), []crypto.Signer{k}, 2, 50*time.Millisecond)
	if err != nil || rate <= 0 {
		t.Fatalf("Measure = %v, %v", rate, err)
	}
	if _, err := Measure(context.Background(), nil, 2, time.Millisecond); err == nil {
		t.Fatal("no keys accepted")
	}
}
