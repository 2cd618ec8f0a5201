// Package ca is the certificate authority of kms: it holds the CA keys and
// signs certificates and CRLs. It is pure in the sense that it knows nothing
// of the database: the caller chooses what to certify, stores what comes
// back and decides which serials are revoked. An Authority does not change
// after Open, so its methods are safe for concurrent use.
//
// # Hierarchy, key types and lifetimes
//
// Open creates, on first run, three certificates in the CA directory:
//
//   - root.pem / root.key: a self-signed root, RSA-4096, 20 years,
//     pathLenConstraint 1. The root is what administrators distribute to
//     mail clients, so it should outlive several issuing CAs; 4096 bits keep
//     an RSA key credible for that long, and RSA is what every S/MIME client
//     (Outlook and Windows CryptoAPI, Thunderbird/NSS, Apple Mail, GnuPG's
//     gpgsm) validates without surprises. kms needs the root key only to
//     create the issuing CA; after the first run root.key can be moved
//     offline.
//   - issuer.pem / issuer.key: the issuing CA, RSA-2048 by default
//     (Config.KeyType), 5 years, pathLenConstraint 0, extended key usage
//     emailProtection and the anyPolicy certificate policy (the CA/Browser
//     Forum S/MIME Baseline Requirements allow anyPolicy for a CA operated by
//     the same organisation as its root). RSA-2048 is accepted by the S/MIME
//     BRs and by NIST SP 800-131A until the end of 2030, and it is the
//     fastest RSA size to sign with; a 5-year issuing CA created today
//     therefore stops issuing before 2048-bit RSA is retired. ECDSA P-256 or
//     P-384 may be chosen instead where every client in use supports it.
//   - kms.pem / kms.key: the KMS's own S/MIME certificate for its mailbox,
//     with the same profile as users' certificates and key type
//     Config.KeyType. kms.pem keeps earlier, unexpired certificates of the
//     same key after the current one, so that mail encrypted to an older
//     KMS certificate can still be matched to the key.
//
// On later runs Open loads these files. It renews the KMS certificate (same
// key) when it is within 30 days of expiry, or when the KMS address or the
// CRL and AIA URLs changed. It does not renew the issuing CA; Open logs a
// warning once that CA has less than 18 months left, because from then on
// users' certificates are cut short at its expiry.
//
// # Subscriber profile
//
// Issue follows the S/MIME Baseline Requirements, mailbox-validated strict
// profile (policy 2.23.140.1.5.1.3): the subject is commonName=the mailbox
// address (or empty when the address is longer than the 64 characters a
// commonName may hold, in which case the subjectAltName becomes critical),
// subjectAltName holds the rfc822Name only, extended key usage is
// emailProtection only, key usage is critical and by key type (RSA:
// digitalSignature and keyEncipherment; ECDSA: digitalSignature and
// keyAgreement, since an EC key cannot encipher), basicConstraints says CA
// false, and the CRL distribution point and AIA caIssuers URLs are always
// present (BaseURL + CRLPath, BaseURL + IssuerPath). The strict profile
// requires those URLs to be plain http: they point at signed objects, and an
// https URL would make a client validate one certificate chain in order to
// validate another. A mailbox-validated certificate may not carry a person's
// name, so Issue has no field for one.
//
// # Keys
//
// Keys live behind the KeyStore interface so that an HSM can replace the
// files. FileKeys stores PKCS#8 PEM files, mode 0600, encrypted with PBES2
// (PBKDF2-HMAC-SHA256, AES-256-CBC) when a passphrase is configured, a format
// that `openssl pkey` reads as it is.
package ca
