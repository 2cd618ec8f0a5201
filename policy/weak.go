package policy

import (
	"math/big"
	"sync"
)

// This file holds the arithmetic behind CheckKey's RSA modulus checks. All of
// it works on public values only, so timing does not matter.

// fermatRounds bounds Fermat's method as boulder does: 100 rounds cost well
// under a millisecond and catch any modulus whose primes agree in roughly
// their top half of bits, which independent random primes never do.
const fermatRounds = 100

// smallPrimeLimit follows BR 6.1.6: the modulus SHOULD have no factors
// smaller than 752.
const smallPrimeLimit = 752

// smallPrimes lists the primes below smallPrimeLimit, sieved once.
var smallPrimes = sync.OnceValue(func() []int64 { return primesBelow(smallPrimeLimit) })

// primesBelow returns the primes below n by the sieve of Eratosthenes.
func primesBelow(n int) []int64 {
	composite := make([]bool, n)
	var primes []int64
	for i := 2; i < n; i++ {
		if composite[i] {
			continue
		}
		primes = append(primes, int64(i))
		for j := i * i; j < n; j += i {
			composite[j] = true
		}
	}
	return primes
}

// smallFactor returns the smallest prime below smallPrimeLimit that divides
// n, if there is one.
func smallFactor(n *big.Int) (int64, bool) {
	var r, d big.Int
	for _, p := range smallPrimes() {
		if r.Mod(n, d.SetInt64(p)).Sign() == 0 {
			return p, true
		}
	}
	return 0, false
}

// fermatFactor tries to write the odd number n as a^2 - b^2 = (a+b)(a-b),
// starting at a = ceil(sqrt(n)) and stepping a up rounds times. It finds the
// factors at once when they are close together: for n = pq the first a that
// works is (p+q)/2. A perfect square (p = q) is found in the first round.
func fermatFactor(n *big.Int, rounds int) (p, q *big.Int, ok bool) {
	one := big.NewInt(1)
	a := new(big.Int).Sqrt(n)
	b2 := new(big.Int).Mul(a, a)
	if b2.Cmp(n) < 0 {
		// Sqrt rounds down; Fermat's method starts at the ceiling, which is
		// the floor itself only when n is a perfect square.
		a.Add(a, one)
		b2.Mul(a, a)
	}
	b2.Sub(b2, n) // b2 = a^2 - n >= 0
	b := new(big.Int)
	for range rounds {
		if isSquare(b2, b) {
			p = new(big.Int).Add(a, b)
			q = new(big.Int).Sub(a, b)
			// a - b = 1 would be the trivial n = n*1, not a factorisation.
			if q.Cmp(one) > 0 {
				return p, q, true
			}
		}
		// (a+1)^2 - n = (a^2 - n) + 2a + 1: update b2 without squaring.
		b2.Add(b2, a).Add(b2, a).Add(b2, one)
		a.Add(a, one)
	}
	return nil, nil, false
}

// squareMod64 marks the residues modulo 64 that squares can have (12 of 64).
// Testing it first skips most square roots in fermatFactor.
var squareMod64 = func() (t [64]bool) {
	for i := range 64 {
		t[i*i%64] = true
	}
	return t
}()

// isSquare reports whether x >= 0 is a perfect square, leaving its square
// root in root when it is.
func isSquare(x, root *big.Int) bool {
	if words := x.Bits(); len(words) > 0 && !squareMod64[words[0]&63] {
		return false
	}
	root.Sqrt(x)
	var sq big.Int
	return sq.Mul(root, root).Cmp(x) == 0
}

// rocaPrimes are the small primes of the ROCA fingerprint (Nemec et al.,
// "The Return of Coppersmith's Attack", CCS 2017). Vulnerable Infineon chips
// build each prime as k*M + (65537^a mod M), where M is the product of the
// first 39 primes or more, for every key size. Hence, for each of these
// primes r, the modulus mod r lies in the subgroup that 65537 generates in
// the integers mod r. A random modulus lands in all those subgroups with
// negligible probability.
var rocaPrimes = []int64{
	3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71,
	73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149,
	151, 157, 163, 167,
}

// rocaSubgroups holds, for each prime of rocaPrimes, the set of powers of
// 65537 modulo that prime, computed once.
var rocaSubgroups = sync.OnceValue(func() [][]bool {
	groups := make([][]bool, len(rocaPrimes))
	for i, r := range rocaPrimes {
		in := make([]bool, r)
		g := 65537 % r
		for x := int64(1); !in[x]; x = x * g % r {
			in[x] = true
		}
		groups[i] = in
	}
	return groups
})

// rocaFingerprint reports whether n has the ROCA fingerprint.
func rocaFingerprint(n *big.Int) bool {
	var rem, d big.Int
	for i, r := range rocaPrimes {
		x := rem.Mod(n, d.SetInt64(r)).Int64()
		if !rocaSubgroups()[i][x] {
			return false
		}
	}
	return true
}
