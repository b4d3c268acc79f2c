# Inputs of the switchboard AWS module. Cross-variable rules (for example "a URL needs its
# SHA-256") are lifecycle preconditions in server.tf, since Terraform 1.5 lets a validation
# block refer to its own variable only.

# ---------------------------------------------------------------------------------------------
# Where and what
# ---------------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region for everything this module creates, e.g. eu-west-1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "The region must look like eu-west-1 or us-gov-west-1."
  }
}

variable "name" {
  description = "Prefix of the names of the AWS resources (security group, IAM role, SSM parameters, IoT policies). Keep \"switchboard\" to get the IoT policy names docs/aws-iot.md uses."
  type        = string
  default     = "switchboard"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,26}[a-z0-9]$", var.name))
    error_message = "The name must be 2 to 28 characters (IAM name prefixes are short): lower-case letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "tags" {
  description = "Tags added to every resource (through the provider's default_tags)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# The server instance
# ---------------------------------------------------------------------------------------------

variable "os" {
  description = "Operating system of the server: \"debian12\" (Debian 12, official AMI) or \"al2023\" (Amazon Linux 2023)."
  type        = string
  default     = "debian12"

  validation {
    condition     = contains(["debian12", "al2023"], var.os)
    error_message = "The os must be \"debian12\" or \"al2023\"."
  }
}

variable "architecture" {
  description = "CPU architecture of the server: \"arm64\" (Graviton, e.g. t4g) or \"x86_64\". It must match instance_type and the switchboard binary (linux-arm64 or linux-amd64)."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "The architecture must be \"arm64\" or \"x86_64\"."
  }
}

variable "ami_id" {
  description = "AMI to use instead of the newest one matching os and architecture (null: look it up). The instance ignores later AMI releases; replace it with `terraform apply -replace=aws_instance.server` to move on."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "The ami_id must be null or an AMI id such as ami-0123456789abcdef0."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the server. One small instance carries thousands of idle devices (about 100 KiB each)."
  type        = string
  default     = "t4g.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "The instance_type must look like t4g.small, m7g.large or m7i-flex.large."
  }
}

variable "root_volume_size" {
  description = "Size of the server's root volume in GiB (the OS and the binary; switchboard's state is on its own volume)."
  type        = number
  default     = 8

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024 && floor(var.root_volume_size) == var.root_volume_size
    error_message = "The root_volume_size must be a whole number of GiB from 8 to 1024."
  }
}

variable "subnet_id" {
  description = "Subnet of the server; it needs a route to an internet gateway (the Elastic IP). Null: the default VPC's default subnet in availability_zone."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("^subnet-[0-9a-f]{8,17}$", var.subnet_id))
    error_message = "The subnet_id must be null or a subnet id such as subnet-0123456789abcdef0."
  }
}

variable "availability_zone" {
  description = "Availability zone of the server and its state volume when subnet_id is null, e.g. eu-west-1a. Null: the zone of existing_state_volume_id if set, else the region's first zone."
  type        = string
  default     = null

  validation {
    condition     = var.availability_zone == null || can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+[a-z]$", var.availability_zone))
    error_message = "The availability_zone must be null or a zone name such as eu-west-1a."
  }
}

# ---------------------------------------------------------------------------------------------
# The switchboard binary and service
# ---------------------------------------------------------------------------------------------

variable "switchboard_url" {
  description = "HTTPS URL of the switchboard binary for the server's architecture (a `make release` file, e.g. switchboard-v1.0.0-linux-arm64). Set this and switchboard_sha256, or switchboard_s3_uri."
  type        = string
  default     = null

  validation {
    condition     = var.switchboard_url == null || can(regex("^https://[^[:space:]'\"\\\\]+$", var.switchboard_url))
    error_message = "The switchboard_url must be null or an https:// URL without spaces or quotes."
  }
}

variable "switchboard_sha256" {
  description = "SHA-256 of the switchboard binary (64 hex digits, as in the release's SHA256SUMS). Required with switchboard_url; checked too, when set, with switchboard_s3_uri."
  type        = string
  default     = null

  validation {
    condition     = var.switchboard_sha256 == null || can(regex("^[0-9a-f]{64}$", var.switchboard_sha256))
    error_message = "The switchboard_sha256 must be null or 64 lower-case hex digits."
  }
}

variable "switchboard_s3_uri" {
  description = "S3 object holding the switchboard binary, s3://BUCKET/KEY. The instance profile may read that one object and nothing else in S3."
  type        = string
  default     = null

  validation {
    condition     = var.switchboard_s3_uri == null || can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^[:space:]'\"\\\\*?]+$", var.switchboard_s3_uri))
    error_message = "The switchboard_s3_uri must be null or s3://BUCKET/KEY, with no spaces, quotes or wildcards in the key."
  }
}

variable "ssh_port" {
  description = "Port of the switchboard SSH server, opened to allowed_cidrs. Below 1024 the service gets CAP_NET_BIND_SERVICE; 22 also needs admin SSH to stay off (both use port 22)."
  type        = number
  default     = 2222

  validation {
    condition     = var.ssh_port >= 1 && var.ssh_port <= 65535 && floor(var.ssh_port) == var.ssh_port
    error_message = "The ssh_port must be a whole number from 1 to 65535."
  }
}

variable "allowed_cidrs" {
  description = "CIDR blocks (IPv4 or IPv6) that may reach the switchboard SSH port, and the MQTT port when embedded_broker is true: devices and operators."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0)) && try(cidrsubnet(c, 0, 0) == c, false)])
    error_message = "The allowed_cidrs must be a non-empty list of CIDR blocks in canonical form (network address, e.g. 0.0.0.0/0 or 203.0.113.0/24, not 203.0.113.7/24)."
  }
}

variable "public_hostname" {
  description = "DNS name that resolves to the Elastic IP (you create the record). Null: the Elastic IP's address is the server's --public-addr host. Devices pin the host key for this name, so decide before enrolling."
  type        = string
  default     = null

  validation {
    condition     = var.public_hostname == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.public_hostname))
    error_message = "The public_hostname must be null or a lower-case DNS name such as pivot.example.com."
  }
}

variable "server_extra_args" {
  description = "Extra arguments appended to `switchboard serve`, one flag or value per element, e.g. [\"--domain\", \"example.com\"]."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.server_extra_args : can(regex("^[A-Za-z0-9_.,:/=@+-]+$", a))])
    error_message = "Each of server_extra_args may hold only letters, digits and _ . , : / = @ + - (no spaces, quotes or %)."
  }
}

# ---------------------------------------------------------------------------------------------
# Administration
# ---------------------------------------------------------------------------------------------

variable "admin_cidr" {
  description = "CIDR block allowed to reach the instance's own sshd on port 22 (the OS, for `switchboard enroll`). Null: port 22 stays closed; use SSM."
  type        = string
  default     = null

  validation {
    condition     = var.admin_cidr == null || (can(cidrhost(var.admin_cidr, 0)) && try(cidrsubnet(var.admin_cidr, 0, 0) == var.admin_cidr, false))
    error_message = "The admin_cidr must be null or a CIDR block in canonical form such as 198.51.100.7/32."
  }
}

variable "admin_ssh_public_key" {
  description = "OpenSSH public key installed for the OS's default user (admin on Debian, ec2-user on Amazon Linux). Null: no key pair."
  type        = string
  default     = null

  validation {
    condition     = var.admin_ssh_public_key == null || can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\\.com) [A-Za-z0-9+/=]+( .*)?$", var.admin_ssh_public_key))
    error_message = "The admin_ssh_public_key must be null or one OpenSSH public key line (ssh-ed25519 AAAA...)."
  }
}

variable "ssm_enabled" {
  description = "Attach AmazonSSMManagedInstanceCore to the instance role (and install the SSM agent on Debian) so that `aws ssm start-session` reaches the instance without opening port 22. That managed policy lets the instance read any SSM parameter of the account."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# What outlives the instance: the state volume and the address
# ---------------------------------------------------------------------------------------------

variable "state_volume_size" {
  description = "Size in GiB of the EBS volume mounted at /var/lib/switchboard (host key, authorized_keys, last-seen, the embedded broker's CA). It outlives the instance."
  type        = number
  default     = 4

  validation {
    condition     = var.state_volume_size >= 1 && var.state_volume_size <= 16384 && floor(var.state_volume_size) == var.state_volume_size
    error_message = "The state_volume_size must be a whole number of GiB from 1 to 16384."
  }
}

variable "state_volume_type" {
  description = "EBS type of the state volume."
  type        = string
  default     = "gp3"

  validation {
    condition     = contains(["gp2", "gp3"], var.state_volume_type)
    error_message = "The state_volume_type must be \"gp2\" or \"gp3\"."
  }
}

variable "state_volume_prevent_destroy" {
  description = "Create the state volume with lifecycle prevent_destroy, so that no plan can delete the server's host key. Changing this later moves the volume between two resource addresses: see README.md."
  type        = bool
  default     = true
}

variable "existing_eip_allocation_id" {
  description = "Reuse this Elastic IP (allocation id, e.g. one kept from a previous deployment with `terraform state rm`) instead of allocating one, so that devices keep dialling the same address."
  type        = string
  default     = null

  validation {
    condition     = var.existing_eip_allocation_id == null || can(regex("^eipalloc-[0-9a-f]{8,17}$", var.existing_eip_allocation_id))
    error_message = "The existing_eip_allocation_id must be null or an allocation id such as eipalloc-0123456789abcdef0."
  }
}

variable "existing_state_volume_id" {
  description = "Reuse this EBS volume (one a previous deployment left behind) as the state volume instead of creating one. The server is placed in its availability zone."
  type        = string
  default     = null

  validation {
    condition     = var.existing_state_volume_id == null || can(regex("^vol-[0-9a-f]{8,17}$", var.existing_state_volume_id))
    error_message = "The existing_state_volume_id must be null or a volume id such as vol-0123456789abcdef0."
  }
}

# ---------------------------------------------------------------------------------------------
# On-demand devices: MQTT
# ---------------------------------------------------------------------------------------------

variable "embedded_broker" {
  description = "Run switchboard's embedded MQTT broker on port 8883 (opened to allowed_cidrs) for on-demand devices. Mutually exclusive with iot_enabled; with both false the server runs with --mqtt off."
  type        = bool
  default     = false
}

variable "iot_enabled" {
  description = "Use AWS IoT Core as the MQTT broker: creates the server's and each device's thing, certificate and policy, and starts the server with --mqtt mqtts://ENDPOINT:8883."
  type        = bool
  default     = false
}

variable "devices" {
  description = "Names of the on-demand devices to create IoT things and certificates for (iot_enabled only). Thing name = device name = MQTT client id, so: lower case, no dots."
  type        = set(string)
  default     = []

  validation {
    condition     = alltrue([for d in var.devices : can(regex("^[a-z0-9_-]{1,63}$", d)) && d != "switchboard-server"])
    error_message = "Each device name must match ^[a-z0-9_-]{1,63}$ (IoT thing names allow no dots, switchboard uses lower case) and may not be switchboard-server."
  }
}

variable "device_csrs" {
  description = "Optional PEM certificate signing requests by device name. A device listed here gets its IoT certificate from its CSR, so its private key never leaves the device and never enters the Terraform state; the others get a key pair generated by IoT."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for n, csr in var.device_csrs : can(regex("^[a-z0-9_-]{1,63}$", n)) && strcontains(csr, "-----BEGIN CERTIFICATE REQUEST-----")])
    error_message = "Each key of device_csrs must be a device name (^[a-z0-9_-]{1,63}$) and each value a PEM CSR (-----BEGIN CERTIFICATE REQUEST-----)."
  }
}

variable "mqtt_prefix" {
  description = "MQTT topic prefix (server --mqtt-prefix, agent mqtt_prefix); the IoT policies are written for it."
  type        = string
  default     = "switchboard"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", var.mqtt_prefix)) && length(split("/", var.mqtt_prefix)) <= 6
    error_message = "The mqtt_prefix must be one to six topic levels (AWS IoT allows 7 '/' in a topic) of letters, digits, '_' and '-' separated by '/', with no MQTT or policy wildcards."
  }
}
